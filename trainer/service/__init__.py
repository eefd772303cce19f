"""The trainer service, which schedules training jobs: the Kafka consumer of training events, the registry
of runs, the design and model stores, the status API and the deploy to the scheduler. It runs in the trainer
process (trainer/process.py), never inside a training image."""
