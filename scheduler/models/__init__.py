"""The model domain: what a model, replica and server are, what state each is in, and the cluster that places
versions on servers and follows them through loads, unloads and drains."""
