"""The honeycomb: cells, links, failure detection and waggle gossip (issue 5, in progress)."""
