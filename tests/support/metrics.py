"""A gateway's /metrics text, parsed by prometheus-client's own parser: the one reader of
scrapes the tests share."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One /metrics scrape: raw text and every sample by (name, labels)."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return cls(text, samples)

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the series does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    @property
    def sample_names(self) -> set[str]:
        return {name for name, _ in self.samples}

    @property
    def label_names(self) -> dict[str, set[str]]:
        """Every sample name, and the label names its samples carry."""
        names: dict[str, set[str]] = {}
        for name, labels in self.samples:
            names.setdefault(name, set()).update(label for label, _ in labels)
        return names

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= sample_labels
        )


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` in a scrape whose labels include `labels`."""
    return Scrape.parse(text).total(name, **labels)
