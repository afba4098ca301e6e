"""`hexamesh chaos`'s settle test, without processes."""

from hexamesh.chaos import unwatched


def test_an_agent_no_other_agent_links_to_is_unwatched() -> None:
    statuses = [
        {"node_id": "a", "neighbours": ["b", "c"]},
        {"node_id": "b", "neighbours": ["a"]},
        {"node_id": "c", "neighbours": ["a", "b"]},
        {"node_id": "d", "neighbours": ["a"]},  # placed and linked, but nobody links to it
        {},  # no agent.json yet
    ]
    assert unwatched(statuses) == [3, 4]
    statuses[1]["neighbours"] = [*statuses[1]["neighbours"], "d"]
    assert unwatched(statuses) == [4]
