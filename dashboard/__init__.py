"""The dashboard: a read-only web page over the scheduler's status streams (servers, models, pipelines,
experiments), the gateway's request counters and the trainer's runs, kept live with server-sent events."""
