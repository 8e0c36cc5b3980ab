"""The core that training and serving both stand on: errors, atomic files, JSONL, models and
fingerprints, data specs, the forget-set artifact and its request settings, the assistant's
architecture, and the request types. It imports nothing else of uld-serve."""
