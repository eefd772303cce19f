"""The status relay: one subscription per kind of status to the scheduler, served to many subscribers.

``modelplane status-relay`` holds what the scheduler's four status streams (models, servers, pipelines,
experiments) say, and serves the same RPCs of the Scheduler API, wire-compatible, to as many subscribers as it
allows: the scheduler pays one delivery per status whatever the number of subscribers, and relays scale out on
other cores and nodes (a watch cache). README.md, "Status relays", says when to use one.
"""
