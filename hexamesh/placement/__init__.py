"""Model placement by scout voting: a replica moves only when a quorum agrees.

``messages`` (what scouts say), ``score`` (how a scout ranks candidates, pure),
``vote`` (the sans-IO election core), ``swarmscale`` (when to call a vote) and
``service`` (the trio side: slot claims in the DHT, loading the model).
"""
