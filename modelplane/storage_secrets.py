"""Storage credentials in a model's spec: the one redaction every copy of a spec that leaves its loader goes through.

A model's ``modelSpec.storageConfig`` names its artifact store's credentials either by reference
(``storageSecretName``: the agent reads the secret itself) or inline (``storageRcloneConfig``: an rclone remote
holding the S3 keys). Only the agent that downloads the artifact needs an inline config in clear. Everywhere else
(status answers and streams, the state store, logs, errors) the spec goes through ``redacted_model``: the reference
stays as given, the inline text becomes ``REDACTED_RCLONE_CONFIG``.

The marker keeps the wire shape: the ``config`` oneof still says "inline config" (a client can see that the model
uses one), and its value is a fixed string that is neither JSON nor INI, so no client mistakes it for a config.
An agent handed the marker (the scheduler restored the model without its credentials, see
scheduler/models/model_records.py) says so in a reason a person can act on, see ``is_redacted``.
"""

from __future__ import annotations

from generated.mlops.scheduler import scheduler_pb2 as pb

REDACTED_RCLONE_CONFIG = "<redacted: an inline storageRcloneConfig is never shown or stored>"


def has_inline_config(model: pb.Model) -> bool:
    """True if ``model`` carries an inline storage config (redacted or not)."""
    return model.modelSpec.storageConfig.WhichOneof("config") == "storageRcloneConfig"


def is_redacted(config_text: str) -> bool:
    """True if ``config_text`` is the marker, not a config: its credentials were withheld."""
    return config_text == REDACTED_RCLONE_CONFIG


def redacted_model(model: pb.Model) -> pb.Model:
    """``model`` with an inline storage config replaced by the marker; ``model`` itself is never changed.

    A model without an inline config is returned as it is (no copy: statuses of every model are rendered often),
    so the result must not be changed by the caller."""
    if not has_inline_config(model):
        return model
    copy = pb.Model()
    copy.CopyFrom(model)
    copy.modelSpec.storageConfig.storageRcloneConfig = REDACTED_RCLONE_CONFIG
    return copy


def with_config_of(model: pb.Model, source: pb.Model) -> pb.Model:
    """A copy of ``model`` holding ``source``'s storage config (to compare specs regardless of credentials)."""
    copy = pb.Model()
    copy.CopyFrom(model)
    copy.modelSpec.storageConfig.CopyFrom(source.modelSpec.storageConfig)
    if not source.modelSpec.HasField("storageConfig"):
        copy.modelSpec.ClearField("storageConfig")
    return copy
