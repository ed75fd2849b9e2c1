"""The Feast feature store, as a resource that hands out the repo and a FeatureStore on it."""

from pathlib import Path

import dagster as dg

from ml_platform.features.store import FeatureRepo, open_store


class FeastResource(dg.ConfigurableResource):
    repo_dir: str
    offline_dir: str
    project: str

    def repo(self) -> FeatureRepo:
        return FeatureRepo(Path(self.repo_dir), Path(self.offline_dir), self.project)

    def store(self):
        return open_store(self.repo())
