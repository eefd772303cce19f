"""Seldon's custom resources (``mlops.seldon.io`` Model, Pipeline, Experiment, as JSON objects) to the Scheduler API's
messages: the one owner of that translation, shared by the controller and the CLI's ``-f`` manifests.

Model.spec -> the Scheduler API (proto/mlops/scheduler/scheduler.proto)::

    storageUri          modelSpec.uri (required)
    artifactVersion     modelSpec.artifactVersion
    secretName          modelSpec.storageConfig.storageSecretName (the agent reads the Secret; never its content)
    requirements        modelSpec.requirements
    memory              modelSpec.memoryBytes (a Kubernetes quantity: 100Mi, 1G, 1e9, or 2GiB as the CLI writes it)
    replicas            deploymentSpec.replicas (default 1), minReplicas/maxReplicas likewise
    server              modelSpec.server
    parameters          modelSpec.parameters [{name, value}]
    explainer           modelSpec.explainer {type, modelRef | pipelineRef}
    llm                 modelSpec.llm {modelRef | pipelineRef} (at most one of explainer and llm)
    logger              deploymentSpec.logPayloads = true; logger.percent has no place in the Scheduler API
    dataflow            Model.dataflowSpec {cleanTopicsOnDelete}
    modelType, schemaUri, preloaded, dedicated
                        no place in the Scheduler API: checked for type, then left to the resource
                        (``Translation.unmapped`` names the ones set)

Pipeline.spec -> Pipeline: steps [{name, inputs, triggers, joinWindowMs, tensorMap, inputsJoinType, triggersJoinType,
batch {size, windowMs}}], input {externalInputs, externalTriggers, joinWindowMs, joinType, triggersJoinType,
tensorMap}, output {steps, joinWindowMs, stepsJoin, tensorMap}, dataflow {cleanTopicsOnDelete}, allowCycles,
maxStepRevisits. A join type is inner, outer or any (any case); the proto's own names (inputsJoin, triggersJoin) are
accepted as well. batch.rolling has no place.

Experiment.spec -> Experiment: default, candidates [{name, weight}], mirror {name, percent}, resourceType (model or
pipeline, default model), config {stickySessions}.

Every message gets ``kubernetesMeta{namespace, generation}`` from the resource's metadata when it has either.

Unknown fields are not errors here: a resource keeps them (the API server preserves what its schema allows), the
translation reads what it knows and names the rest in ``Translation.unknown``; the controller logs them, the CLI
(whose manifests are typed by hand) refuses them. Any other problem raises ResourceSpecError naming the field, in one
line of bounded length; nothing else is raised for any JSON-like input.

The package: fields.py (the checks every kind shares), model.py, pipeline.py, experiment.py.
"""

from modelplane.spec.seldon_resources.experiment import experiment_from_resource
from modelplane.spec.seldon_resources.fields import API_VERSIONS, ResourceSpecError, Translation, listed
from modelplane.spec.seldon_resources.model import MODEL_SPEC_FIELDS, model_from_resource
from modelplane.spec.seldon_resources.pipeline import pipeline_from_resource

__all__ = [
    "API_VERSIONS",
    "MODEL_SPEC_FIELDS",
    "ResourceSpecError",
    "Translation",
    "experiment_from_resource",
    "listed",
    "model_from_resource",
    "pipeline_from_resource",
]
