"""The runs the trainer reports on its status topic, registered as model versions (issue 15: "training runs
started from a Kafka event register their result too, so the registry sees every model the trainer makes")."""
