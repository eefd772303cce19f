"""Who is calling: identities from certificates and tokens, roles from a policy, and the caller of the request
being served (caller.py). Shared by every process's servers; knows nothing of any one service."""
