"""Happywhale - Whale and Dolphin Identification (Kaggle 2022): the data format, the demo, the choices.

The same open-set identification as Humpback (MAP@5, an unknown label `new_individual`), so the whole
flow is `common.tasks.identification`; only the files differ. Unlike Humpback, every train row names
a real individual: the unknown label exists only in answers. The species column is kept (extra
columns are allowed) after fixing the organisers' known spelling slips and merges, so that a species
head or a per-species analysis does not see one species under two names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from common.core.competition import COMPETITIONS, Competition
from common.core.errors import DataError
from common.data.tables import image_table, read_truth_csv, test_images

# Raw species name -> the name the organisers meant (two typos, three species they later merged).
SPECIES_FIXES = {
    "bottlenose_dolpin": "bottlenose_dolphin",
    "kiler_whale": "killer_whale",
    "beluga": "beluga_whale",
    "globis": "short_finned_pilot_whale",
    "pilot_whale": "short_finned_pilot_whale",
}
MAX_LABELS = 5  # MAP@5 reads at most five answers per image


def normalise_species(species: pd.Series, where: Path | str) -> pd.Series:
    """Apply SPECIES_FIXES, printing one line that says what was renamed (silent when nothing was)."""
    renamed = species[species.isin(list(SPECIES_FIXES))]
    if len(renamed):
        which = ", ".join(f"{raw} -> {SPECIES_FIXES[raw]} ({n})" for raw, n in sorted(renamed.value_counts().items()))
        print(f"{where}: renamed species in {len(renamed)} rows: {which}")
    return species.replace(SPECIES_FIXES)


class HappyWhale(Competition):
    """train.csv `image,species,individual_id`; train_images/, test_images/; submission `image,predictions`."""

    name, slug, task = "happywhale", "happy-whale-and-dolphin", "identification"
    new_label = "new_individual"
    config_path = Path(__file__).parent / "config.yaml"

    def read_train(self, root: Path, cfg: Any = None) -> pd.DataFrame:
        """-> image, label (individual_id), path, species (normalised). `cfg` is unused: the format has no options."""
        path = Path(root) / "train.csv"
        table = image_table(path, ["image", "species", "individual_id"], "image", Path(root) / "train_images")
        bad = table.individual_id[table.individual_id.str.strip().isin(["", self.new_label])]
        if len(bad):
            raise DataError(f"{path}: individual_id must name a real individual, got '{bad.iloc[0]}' "
                            f"in {len(bad)} rows (the unknown label belongs in answers only)")
        return pd.DataFrame({"image": table.image, "label": table.individual_id, "path": table.path,
                             "species": normalise_species(table.species, path)})

    def read_test(self, root: Path) -> pd.DataFrame:
        """-> image, path, in sample_submission.csv's order (sorted test_images/ without one)."""
        return test_images(root, "test_images", ["image", "predictions"])

    def read_truth(self, root: Path) -> pd.DataFrame | None:
        """The demo's test_truth.csv (`image,individual_id`) -> image, label; None on Kaggle's data."""
        return read_truth_csv(root, ["image", "individual_id"])

    def submission_frame(self, ids: Sequence[str], answers: Sequence[Sequence[str]]) -> pd.DataFrame:
        return pd.DataFrame({"image": list(ids), "predictions": [" ".join(map(str, a)) for a in answers]})

    def validate_submission(self, frame: pd.DataFrame, sample: pd.DataFrame | None, where: str) -> None:
        """Kaggle matches rows by image, so order is free; the set of images must be the sample's."""
        if list(frame.columns) != ["image", "predictions"]:
            raise DataError(f"{where}: columns must be image,predictions, got {','.join(map(str, frame.columns))}")
        images = frame.image.astype(str)
        if images.duplicated().any():
            raise DataError(f"{where}: image {images[images.duplicated()].iloc[0]} appears twice")
        if sample is not None:
            expected, given = set(sample["image"].astype(str)), set(images)
            for problem, names in (("missing", expected - given), ("not in sample_submission.csv", given - expected)):
                if names:
                    raise DataError(f"{where}: {len(names)} images {problem}, e.g. {sorted(names)[0]}")
        for image, text in zip(images, frame.predictions):
            labels = text.split() if isinstance(text, str) else []
            if not labels:
                raise DataError(f"{where}: image {image} has no prediction")
            if len(labels) > MAX_LABELS:
                raise DataError(f"{where}: image {image} has {len(labels)} labels, at most {MAX_LABELS} allowed")
            if len(set(labels)) != len(labels):
                raise DataError(f"{where}: image {image} repeats a label ({text})")

    def write_demo(self, root: Path) -> Path:
        from .demo import write_demo

        return write_demo(root)


COMPETITION = COMPETITIONS.register("happywhale")(HappyWhale())
