"""The gateway's Kafka bridge: topics, record formats, settings, the bridge loop and its wiring."""
