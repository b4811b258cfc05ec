# Immune-repertoire experiments (task: repertoires).
