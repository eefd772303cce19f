"""The service layer as one object the REST edge and the process hold: experiments, datasets, splits, models,
versions, aliases, promotions and what the scheduler serves."""

from __future__ import annotations

from registry.service.aliases import AliasService
from registry.service.context import ServiceContext
from registry.service.datasets import DatasetService
from registry.service.experiments import ExperimentService
from registry.service.models import ModelService
from registry.service.promotions import PromotionService
from registry.service.serving import ServingService
from registry.service.splits import SplitService
from registry.service.training import TrainingService
from registry.service.versions import VersionService


class RegistryService:
    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.experiments = ExperimentService(context)
        self.datasets = DatasetService(context)
        self.splits = SplitService(context)
        self.models = ModelService(context, self.splits)
        self.training = TrainingService(context)
        self.versions = VersionService(context)
        self.aliases = AliasService(context)
        self.promotions = PromotionService(context)
        self.serving = ServingService(context)

    async def close(self) -> None:
        await self.splits.close()
        await self.training.close()
