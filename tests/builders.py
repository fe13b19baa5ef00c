"""Builders of small source files in every supported format, for tests."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

GENRES_100K = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\nDocumentary|7\n"
    "Drama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\nRomance|14\nSci-Fi|15\n"
    "Thriller|16\nWar|17\nWestern|18\n"
)


def flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("1\t2\t4\t100\n1\t1\t5\t50\n2\t1\t3\t70\n2\t3\t1\t70\n")
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}",
        f"2|Cité des enfants perdus, La (1995)|01-Jan-1995||http://x|{flags(8, 15)}",
        f"3|unknown|||http://x|{flags(0)}",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (folder / "u.genre").write_text(GENRES_100K + "\n")
    return folder


def write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    movies = "10::Heat (1995)::Action|Crime|Thriller\n20::Amélie (2001)::Comedy|Romance\n"
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def write_ml_latest(folder: Path, tags: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,2.5,964982224\n"
    )
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",'
        "(no genres listed)\n"
    )
    if tags:
        (folder / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,pixar,2\n2,1,fun,3\n1,3,politics,4\n"
        )
    return folder


def write_recbole(folder: Path, name: str = "toy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t3\t10\nu1\ti2\t4\t5\nu2\ti2\t5\t7\n"
    )
    (folder / f"{name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "i1\tSpace Robot\t1990\tAction Drama\ni2\tGhost City\t2000\tHorror\n"
    )
    return folder


def cyclic_dataset(n_users: int = 60, n_items: int = 60, length: int = 12, seed: int = 0):
    """A log where the next item is learnable: each user walks the catalogue in steps of +1 (mod n_items).

    Returns a ``bertrec.data.dataset.Dataset`` whose items have short texts from the tiny tokenizer's vocabulary.
    """
    import numpy as np
    import pandas as pd

    from bertrec.data.dataset import Dataset

    words = ["action", "comedy", "drama", "horror", "romance", "war", "space", "robot", "love", "ghost"]
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(length):
            rows.append((str(u), str((start + t) % n_items), t, u, (start + t) % n_items))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "user_idx", "item_idx"])
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items, dtype=np.int32),
            "item_id": [str(i) for i in range(n_items)],
            "text": [f"{words[i % 10]} {words[(i // 10 + 3) % 10]} movie" for i in range(n_items)],
            "title": [f"{words[i % 10]} {words[(i // 10 + 3) % 10]}" for i in range(n_items)],
        }
    )
    return Dataset(interactions, items)


PIPELINE_STEPS = ("prepare", "split", "baselines", "train", "embed", "index", "evaluate")


def tiny_model(encoder: Path) -> list[str]:
    """Overrides of a tiny two-tower model on ``encoder`` that learns the cyclic log in a few epochs."""
    return [
        f"model.encoder={encoder}",
        "model.dim=16",
        "model.layers=1",
        "model.max_history=8",
        "model.dropout=0.0",
        # cosine scores: the geometry these tests were written for (a vector's nearest item is itself)
        "model.score=cosine",
        "model.ff_mult=2",
        "train.batch_size=16",
        "train.lr=0.005",
        "train.warmup_steps=5",
        "eval.batch_size=32",
    ]


# How a small project reads the cyclic log's items (title and genres columns of items.csv).
TABLE_SOURCE = ["data.source=table", "data.text_template='{title}. Genres: {genres}.'"]


def project_args(root: Path, encoder: Path, *extra: str, dataset=None) -> list[str]:
    """CLI arguments of a small project under ``root``: the cyclic log as CSV, a tiny encoder, all paths inside.

    Writes ``log.csv`` and ``items.csv`` (``dataset``: default :func:`cyclic_dataset`); ``extra`` are
    further ``--set`` overrides.
    """
    from conftest import paths_under

    data = dataset if dataset is not None else cyclic_dataset()
    data.interactions[["user_id", "item_id", "timestamp"]].to_csv(root / "log.csv", index=False)
    data.items[["item_id", "title"]].assign(genres=data.items["text"]).to_csv(root / "items.csv", index=False)
    sets = [
        *paths_under(root),
        *TABLE_SOURCE,
        f"data.path={root / 'log.csv'}",
        f"data.items_path={root / 'items.csv'}",
        "baselines.models=[popular, itemknn]",
        *tiny_model(encoder),
        "train.epochs=8",
        *extra,
    ]
    return ["--params", str(root / "absent.yaml"), *[x for s in sets for x in ("--set", s)]]


def run_steps(args: list[str], steps=PIPELINE_STEPS) -> dict[str, str]:
    """Run CLI steps in-process (``"registry status"`` for a sub-command); returns each step's output.

    Fails the test with the output of a step that fails.
    """
    from typer.testing import CliRunner

    from bertrec.cli import app

    runner = CliRunner()
    outputs = {}
    for step in steps:
        result = runner.invoke(app, [*step.split(), *args])
        assert result.exit_code == 0, f"{step}: {result.output}"
        outputs[step] = result.output
    return outputs


PROJECT_FILES = ("dvc.yaml", "prefect.yaml", "bertrec", "flows", "tasks")


def dvc_project(root: Path, encoder: Path, mlflow_uri: str, *extra: str, remote: Path | None = None) -> Path:
    """A git + DVC repository under ``root`` with this project's dvc.yaml, prefect.yaml and code, tiny params.

    The log and items (the cyclic dataset) sit in ``incoming/``; params.yaml keeps the default
    relative paths, so dvc.yaml's outs apply. ``remote``: the default DVC remote (a folder; default
    inside the repository's cache). Returns ``root``.
    """
    import shutil
    import subprocess
    import sys

    from bertrec.config import apply_overrides

    repo = Path(__file__).resolve().parents[1]
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = repo / name
        (
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            if source.is_dir()
            else shutil.copy(source, root / name)
        )
    (root / "incoming").mkdir()
    data = cyclic_dataset()
    data.interactions[["user_id", "item_id", "timestamp"]].to_csv(root / "incoming" / "log.csv", index=False)
    data.items[["item_id", "title"]].assign(genres=data.items["text"]).to_csv(
        root / "incoming" / "items.csv", index=False
    )
    shutil.copy(repo / "params.yaml", root / "params.yaml")
    apply_overrides(
        root / "params.yaml",
        [
            *TABLE_SOURCE,
            "data.path=incoming/log.csv",
            "data.items_path=incoming/items.csv",
            "baselines.models=[popular, itemknn]",
            *tiny_model(encoder),
            "train.epochs=6",
            f"mlflow.tracking_uri={mlflow_uri}",
            f"paths.cache={root / '.cache'}",
            *extra,
        ],
    )
    (root / ".gitignore").write_text(".cache/\nmlruns/\n__pycache__/\n")
    bin_dir = Path(sys.executable).parent

    def run(*command: str) -> None:
        subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)

    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "test@bertrec")
    run("git", "config", "user.name", "bertrec test")
    run(str(bin_dir / "dvc"), "init", "-q")
    run(str(bin_dir / "dvc"), "config", "core.analytics", "false")
    run(str(bin_dir / "dvc"), "remote", "add", "-d", "local", str(remote or root / ".cache" / "dvc-remote"))
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "project")
    return root


def dvc(root: Path, *args: str) -> str:
    """Run the environment's ``dvc`` in ``root`` (its stages' ``bertrec`` on PATH); returns stdout+stderr."""
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(bin_dir / "dvc"), *args], cwd=root, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


# Timed logs for drift and replay tests: two weeks from T0, 60 items whose genre is WORDS[i % 10].
WORDS = ["action", "comedy", "drama", "horror", "romance", "war", "space", "robot", "love", "ghost"]
N_ITEMS, N_USERS, LENGTH = 60, 60, 20
T0, WEEK = 1_700_000_000, 7 * 86_400


def iso(seconds: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


def walks(users: range, start: int, rng) -> list[tuple[str, str, int]]:
    """Each user walks the catalogue in steps of +1 at random times within the week from ``start``."""
    rows = []
    for u in users:
        first = int(rng.integers(N_ITEMS))
        times = sorted(rng.integers(start + 1, start + WEEK, LENGTH))
        rows += [(str(u), str((first + t) % N_ITEMS), int(times[t])) for t in range(LENGTH)]
    return rows


def one_genre(users: range, start: int, rng, genre: str = "horror") -> list[tuple[str, str, int]]:
    """Each user takes every item of one genre, at random times within the week from ``start``."""
    items = [str(i) for i in range(N_ITEMS) if WORDS[i % 10] == genre]
    return [(str(u), item, int(rng.integers(start + 1, start + WEEK))) for u in users for item in items]


def write_timed_logs(incoming: Path) -> None:
    """``same.csv`` and ``shifted.csv``: the same first week; in the second, new users who behave the same
    way, or who take every item of one genre. ``items.csv``: titles and genres."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    first = walks(range(N_USERS), T0, rng)
    new_users = range(1000, 1000 + N_USERS)
    columns = ["user_id", "item_id", "timestamp"]
    pd.DataFrame(first + walks(new_users, T0 + WEEK, rng), columns=columns).to_csv(incoming / "same.csv", index=False)
    pd.DataFrame(first + one_genre(new_users, T0 + WEEK, rng), columns=columns).to_csv(
        incoming / "shifted.csv", index=False
    )
    pd.DataFrame(
        {
            "item_id": [str(i) for i in range(N_ITEMS)],
            "title": [f"{WORDS[i % 10]} {WORDS[(i // 10 + 3) % 10]}" for i in range(N_ITEMS)],
            "genres": [WORDS[i % 10] for i in range(N_ITEMS)],
        }
    ).to_csv(incoming / "items.csv", index=False)
