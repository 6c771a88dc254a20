"""One router per protocol: ``hf`` (Inference Endpoints contract), ``audio`` (the OpenAI and
tt-media-server paths, by Content-Type: ``openai`` and ``tt`` adapt each protocol), ``ops``
(health, metrics, docs)."""
