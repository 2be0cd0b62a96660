"""Families from other packages: found by entry point or module path, held to the contract,
recorded with the study and checked by every worker, export and predict; and the example
plugin (examples/lenet5_family) through the whole CLI.

Most tests "install" a plugin the way importlib.metadata finds one: a folder holding the
package and a dist-info (METADATA, entry_points.txt), put on sys.path or PYTHONPATH. That is
what pip leaves in site-packages, so bumping the version or editing the source is a file edit.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLE_PLUGIN, run_cli, write_spec
from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.families import contract, origin, registry
from mnist_hpo.search import family_origin
from mnist_hpo.search.spec import check_configurations, parse

TINY = '''"""tiny: a family for the plugin tests."""
from dataclasses import dataclass

from torch import nn

SUMMARY = "784 -> width -> OUT"


@dataclass(frozen=True)
class Config:
    width: int


def sample(hp):
    return Config(width=hp.int("width", 8, 16))


def build(cfg):
    layers = [nn.Flatten(), nn.Linear(784, cfg.width), nn.ReLU(), nn.Linear(cfg.width, OUT)]
    return nn.Sequential(*layers)
'''


def tiny(outputs: int = 10, *, sample: str = "", drop: str = "") -> str:
    """TINY's source with OUT outputs, another sample() body, or one definition left out."""
    source = TINY.replace("OUT", str(outputs))
    if sample:
        source = source.replace('return Config(width=hp.int("width", 8, 16))', sample)
    if drop:
        source = source.replace(f"def {drop}(", f"def not_{drop}(")
    return source


def make_dist(
    root: Path, dist: str, version: str = "1.0", families: dict[str, str] | None = None
) -> Path:
    """A distribution installed into folder `root` (entry point NAME = DIST.NAME per family)."""
    package = root / dist
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    families = {"tiny": tiny()} if families is None else families
    for name, source in families.items():
        (package / f"{name}.py").write_text(source, encoding="utf-8")
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    entries = "".join(f"{name} = {dist}.{name}\n" for name in families)
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{entries}", encoding="utf-8")
    return root


def bump(root: Path, dist: str, old: str, new: str) -> None:
    """What `pip install DIST==NEW` does to the metadata (the code itself is left as it was)."""
    info = root / f"{dist}-{old}.dist-info"
    meta = info / "METADATA"
    meta.write_text(meta.read_text().replace(f"Version: {old}", f"Version: {new}"))
    info.rename(root / f"{dist}-{new}.dist-info")


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Put a folder of plugins on sys.path for one test; forget everything it loaded after."""

    def add(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        registry.resolve.cache_clear()

    yield add
    registry.resolve.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0].startswith("fake")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def spec_of(family: str, **extra: object) -> dict[str, object]:
    return {"family": family, "epochs": 1, "n_trials": 2, **extra}


# --- Finding a family -------------------------------------------------------------------------


def test_a_plugin_is_found_by_its_entry_point_and_records_its_origin(
    tmp_path: Path, on_path: Callable[[Path], None]
) -> None:
    on_path(make_dist(tmp_path, "fakeplug", "1.0"))
    family = registry.resolve("tiny")
    assert family.name == "tiny" and family.summary == "784 -> width -> 10"
    sha = hashlib.sha256((tmp_path / "fakeplug" / "tiny.py").read_bytes()).hexdigest()
    assert family.origin == origin.Origin(origin.PLUGIN, "fakeplug.tiny", "fakeplug", "1.0", sha)
    contract.check(family)  # its smallest and largest configuration build and give 10 logits
    assert "tiny" in registry.plugin_names()
    spec = parse(spec_of("tiny"), source="t", default_name="t")
    assert spec.family_def is family
    listed = {f.name: f for f in registry.available()}
    assert listed["tiny"].family is family and "package fakeplug 1.0" in listed["tiny"].origin
    assert listed["cnn"].origin.startswith("built-in")


def test_a_module_path_names_a_family_without_an_entry_point(
    tmp_path: Path, on_path: Callable[[Path], None]
) -> None:
    (tmp_path / "fakemods").mkdir()
    (tmp_path / "fakemods" / "__init__.py").write_text("")
    (tmp_path / "fakemods" / "small.py").write_text(tiny())
    on_path(tmp_path)
    family = registry.resolve("fakemods.small")
    assert family.origin.kind == origin.MODULE and family.origin.distribution == ""
    assert "not from an installed package" in family.origin.describe()
    assert "fakemods.small" not in registry.plugin_names()  # not listed: nothing declares it


def test_built_ins_come_first_and_a_plugin_that_takes_a_built_in_name_is_refused(
    tmp_path: Path, on_path: Callable[[Path], None]
) -> None:
    on_path(make_dist(tmp_path, "fakeclash", families={"cnn": tiny()}))
    assert registry.resolve("cnn").origin.built_in  # a study already made with it keeps it
    parse(spec_of("cnn"), source="s", default_name="s", stored=True)
    clash = r"'cnn' is a built-in, and the installed plugin fakeclash 1.0 declares the same name"
    with pytest.raises(UsageError, match=clash + r"; .* rename"):
        parse(spec_of("cnn"), source="s", default_name="s")
    built_in, refused = [f for f in registry.available() if f.name == "cnn"]
    assert built_in.family is not None and built_in.origin.startswith("built-in")
    assert refused.family is None and refused.problem.startswith("refused: the built-in cnn")


def test_two_plugins_with_one_name_are_refused(
    tmp_path: Path, on_path: Callable[[Path], None]
) -> None:
    make_dist(tmp_path, "fakeone")
    on_path(make_dist(tmp_path, "faketwo"))
    with pytest.raises(UsageError, match=r"'tiny' is declared by 2 installed plugins .*fakeone"):
        registry.resolve("tiny")


# --- The contract, checked --------------------------------------------------------------------

BROKEN = {
    "no build": (
        tiny(drop="build"),
        r"plugin tiny = 'fakebad.tiny' \(package fakebad 1.0\) is not a model family: it has no "
        r"build; a family module defines SUMMARY",
    ),
    "import fails": ("import nothing_here\n" + tiny(), r"does not import \(ModuleNotFoundError"),
    "sample raises": (
        tiny(sample="return Config(width=hp.int('width', 8, 16) // 0)"),
        r"family tiny: listing its parameters failed \(ZeroDivisionError: integer division",
    ),
    "takes a training name": (
        tiny(sample="return Config(width=hp.int('batch_size', 8, 16))"),
        r"family tiny's sample asks for batch_size, a name the training parameters shared by "
        r"every family already use; rename it",
    ),
    "not a frozen dataclass": (
        tiny().replace("@dataclass(frozen=True)", "@dataclass"),
        r"breaks the family contract \(Config is not a frozen dataclass\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_plugin_that_breaks_the_contract_is_refused_as_it_loads(
    case: str, tmp_path: Path, on_path: Callable[[Path], None]
) -> None:
    source, message = BROKEN[case]
    on_path(make_dist(tmp_path, "fakebad", families={"tiny": source}))
    with pytest.raises(contract.BrokenFamily, match=message):
        registry.resolve("tiny")
    [listed] = [f for f in registry.available() if f.name == "tiny"]
    assert listed.family is None and listed.problem  # `families` lists it with its problem


RANDOM = "random.randrange(10**9)"  # a sample() that depends on more than its answers
CHECKED = {
    "wrong output shape": (
        tiny(outputs=5),
        r"the model of the search's smallest configuration maps a zero batch of shape "
        r"\(2, 1, 28, 28\) to \(2, 5\), not \(2, 10\) logits",
    ),
    "sample bypasses Hyper": (
        tiny(sample="return Config(width=hp.trial.suggest_int('width', 8, 16))"),
        r"sample asks the trial for width directly; ask through the Hyper",
    ),
    "sample depends on something else": (
        tiny(sample=f"import random\n    return Config(width=hp.int('width', 8, 16) + {RANDOM})"),
        r"sample gave Config\(width=\d+\) from the answers that gave Config\(width=\d+\)",
    ),
    "build raises": (
        tiny().replace("nn.Linear(784, cfg.width)", "nn.Linear(783, cfg.width)"),
        r"the forward pass of the search's smallest configuration failed \(RuntimeError: mat1 "
        r"and mat2 shapes cannot be multiplied",
    ),
}


@pytest.mark.parametrize("case", sorted(CHECKED))
def test_create_study_runs_the_family_and_refuses_a_broken_one(
    case: str, tmp_path: Path, on_path: Callable[[Path], None]
) -> None:
    source, message = CHECKED[case]
    on_path(make_dist(tmp_path, "fakebad", families={"tiny": source}))
    spec = parse(spec_of("tiny"), source="s", default_name="s")  # loads: the names are there
    with pytest.raises(contract.BrokenFamily, match=message):
        check_configurations(spec)


def test_a_pinned_built_in_configuration_that_cannot_build_is_one_sentence() -> None:
    # Accepted before this check, then every trial failed: three 7x7 blocks without padding
    # leave no map (28 -> 22 -> 11 -> 5 -> 2 -> -4).
    pinned = parse(
        spec_of("cnn", params={"n_blocks": 3, "kernel_size": 7, "padding": "valid"}),
        source="s",
        default_name="pinned",
    )
    sentence = (
        r"^spec 'pinned': family cnn: build for the search's smallest configuration failed "
        r"\(ValueError: with padding 'valid', kernels \(7, 7, 7\) leave no map to pool in block "
        r"3; .*change the spec's values"
    )
    with pytest.raises(UsageError, match=sentence):
        check_configurations(pinned)
    params = {"padding": ["same", "valid"], "kernel_size": [3, 7]}
    blocks = [{"n_blocks": 2}, {"n_blocks": 3, "kernel_size": 7, "padding": "valid"}]
    enqueued = parse(spec_of("cnn", params=params, enqueue=blocks), source="s", default_name="enq")
    with pytest.raises(UsageError, match=r"build for \[\[enqueue\]\] #2 failed"):
        check_configurations(enqueued)
    fine = parse(
        spec_of("cnn", params={"n_blocks": 2, "kernel_size": 7, "padding": "valid"}),
        source="s",
        default_name="fine",
    )
    check_configurations(fine)  # 28 -> 22 -> 11 -> 5 -> 2: builds


def test_every_shipped_spec_passes_the_create_study_check() -> None:
    from mnist_hpo.search.spec_files import read_spec, shipped_studies

    specs = sorted(shipped_studies().glob("*.toml"))
    assert len(specs) >= 4
    for path in specs:
        check_configurations(read_spec(path))


# --- Recorded with the study, checked where it runs -------------------------------------------


def _one_line_error(r, code: int, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return str(lines[0])


@pytest.fixture
def cli_env(tmp_path: Path, mnist_dir: Path) -> dict[str, str]:
    specs = tmp_path / "specs"
    specs.mkdir()
    return {
        "MNIST_HPO_STORAGE": f"sqlite:///{tmp_path / 'studies.db'}",
        "MNIST_HPO_DATA": str(mnist_dir),
        "MNIST_HPO_STUDIES": str(specs),
        "MNIST_HPO_ARTIFACTS": str(tmp_path / "artifacts"),
    }


TINY_SPEC = """
family = "{family}"
epochs = 1
n_trials = 1
train_size = 1000
validation_size = 500
"""


REFUSED = {
    "does-not-import": (
        "fakenone.tiny",
        None,
        "family 'fakenone.tiny' is neither a built-in (perceptron, simple_mlp, deep_mlp, cnn), an "
        "installed plugin nor a module that imports (ModuleNotFoundError: No module named "
        "'fakenone'); install the package",
    ),
    "no-build": ("fakebad.tiny", tiny(drop="build"), "module fakebad.tiny is not a model family"),
    "wrong-shape": ("fakebad.tiny", tiny(outputs=5), "to (2, 5), not (2, 10) logits"),
    "not-installed": ("lenet9", None, "family 'lenet9' is not known; use a built-in"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_create_study_refuses_a_family_it_cannot_use(
    case: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    family, source, fragment = REFUSED[case]
    if source is not None:
        (tmp_path / "fakebad").mkdir()
        (tmp_path / "fakebad" / "__init__.py").write_text("")
        (tmp_path / "fakebad" / "tiny.py").write_text(source)
    write_spec(Path(cli_env["MNIST_HPO_STUDIES"]), "s", TINY_SPEC.format(family=family))
    r = run_cli("create-study", "s", env={**cli_env, "PYTHONPATH": str(tmp_path)})
    _one_line_error(r, 2, fragment)


def test_a_worker_refuses_another_plugin_version_an_edited_source_or_none(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    make_dist(tmp_path, "fakeplug", "1.0")
    env = {**cli_env, "PYTHONPATH": str(tmp_path)}
    write_spec(Path(cli_env["MNIST_HPO_STUDIES"]), "plug", TINY_SPEC.format(family="tiny"))
    r = run_cli("create-study", "plug", env=env)
    assert r.returncode == 0, r.stderr
    assert "family tiny: plugin fakeplug.tiny (package fakeplug 1.0, source sha256" in r.stdout
    # Without the plugin: which package to install (status and work alike).
    r = run_cli("work", "plug", env=cli_env)
    missing = "study 'plug' uses family 'tiny' from plugin fakeplug.tiny (package fakeplug 1.0"
    _one_line_error(r, 1, missing, "`pip install 'fakeplug==1.0'` on this machine")
    # Another version: both named, before any data is read or trial taken.
    bump(tmp_path, "fakeplug", "1.0", "1.1")
    r = run_cli("work", "plug", env=env)
    then = "study 'plug' ran family tiny from plugin fakeplug.tiny (package fakeplug 1.0"
    here = "but this machine has plugin fakeplug.tiny (package fakeplug 1.1"
    _one_line_error(r, 1, then, here, "`pip install 'fakeplug==1.0'` here")
    r = run_cli("work", "plug", "--jobs", "2", env=env)  # checked once, before the workers
    assert r.returncode == 1 and "[w0]" not in r.stdout, r.stdout
    # The same version with an edited source (an editable install someone changed).
    bump(tmp_path, "fakeplug", "1.1", "1.0")
    source = tmp_path / "fakeplug" / "tiny.py"
    source.write_text(source.read_text() + "# tuned\n")
    r = run_cli("work", "plug", env=env)
    _one_line_error(r, 1, "ran family tiny from plugin", "its source was edited since")
    r = run_cli("create-study", "plug", env=env)  # the same spec again: still the same check
    _one_line_error(r, 1, "its source was edited since")


@pytest.fixture
def plugin_model(
    tmp_path: Path, mnist_dir: Path, on_path: Callable[[Path], None]
) -> Iterator[tuple[Path, str, Path]]:
    """(plugins folder, storage URL, model file): a one-trial study of the plugin family `tiny`
    run in this process and its best trial exported."""
    from mnist_hpo.fleet import worker
    from mnist_hpo.outputs import export
    from mnist_hpo.resilience import storage as storage_mod
    from mnist_hpo.search import study as study_mod
    from mnist_hpo.search.spec_files import read_spec

    plugins = make_dist(tmp_path / "plugins", "fakeplug", "1.0")
    on_path(plugins)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = read_spec(write_spec(tmp_path, "plug", TINY_SPEC.format(family="tiny")))
    study_mod.create(storage_mod.open_storage(url), spec)
    options = worker.WorkOptions(data_dir=mnist_dir, wait=False, artifacts=str(tmp_path / "a"))
    worker.run(url, "plug", options)
    out = tmp_path / "plug.safetensors"
    export.export_best(url, "plug", out, data_dir=mnist_dir)
    yield plugins, url, out


def test_the_origin_travels_to_best_the_report_and_the_model_file(
    plugin_model: tuple[Path, str, Path], tmp_path: Path, mnist_dir: Path
) -> None:
    from mnist_hpo.outputs import model_file, report
    from mnist_hpo.resilience import storage as storage_mod
    from mnist_hpo.search import study as study_mod

    plugins, url, out = plugin_model
    study, spec = study_mod.load(storage_mod.open_storage(url), "plug")
    best = study_mod.best_trial(study)
    assert best is not None
    recorded = study_mod.best_record(study, spec, best)["family_origin"]
    assert recorded["distribution"] == "fakeplug" and recorded["version"] == "1.0"
    assert recorded == registry.resolve("tiny").origin.to_dict()
    assert "plugin fakeplug.tiny (package fakeplug 1.0" in report.render(study, spec)
    loaded = model_file.load_model(out)
    assert loaded.meta["family_origin"] == recorded
    # predict in a process that has the plugin, and in one that does not.
    digits = str(mnist_dir / "t10k-images-idx3-ubyte.gz")
    r = run_cli("predict", str(out), digits, env={"PYTHONPATH": str(plugins)})
    assert r.returncode == 0 and "t10k-images-idx3-ubyte.gz[0]: " in r.stdout, r.stderr
    r = run_cli("predict", str(out), digits)
    missing = f"model file {out} uses family 'tiny' from plugin fakeplug.tiny (package fakeplug 1.0"
    _one_line_error(r, 1, missing, "`pip install 'fakeplug==1.0'` on this machine")
    bump(plugins, "fakeplug", "1.0", "2.0")
    r = run_cli("predict", str(out), digits, env={"PYTHONPATH": str(plugins)})
    other = "this machine has plugin fakeplug.tiny (package fakeplug 2.0"
    _one_line_error(r, 1, f"model file {out} ran family tiny from plugin", other)


def test_families_lists_plugins_beside_the_built_ins(tmp_path: Path) -> None:
    make_dist(tmp_path, "fakeplug", "1.0")
    make_dist(tmp_path, "fakebad", families={"halfdone": tiny(drop="build")})
    make_dist(tmp_path, "fakeclash", families={"cnn": tiny()})
    r = run_cli("families", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert lines[0].startswith("perceptron [built-in, mnist-hpo ")
    assert any(
        line.startswith("tiny [plugin fakeplug.tiny (package fakeplug 1.0, source sha256 ")
        and line.endswith("]: 784 -> width -> 10")
        for line in lines
    ), lines
    assert "    width          int 8..16" in r.stdout
    broken = "halfdone [plugin fakebad.halfdone (package fakebad 1.0)]: unusable: "
    assert any(line.startswith(broken) and "it has no build" in line for line in lines)
    assert any(line.startswith("cnn [plugin fakeclash.cnn") and "refused" in line for line in lines)
    assert 'family = "my_pkg.lenet5"' in lines[-1]


def test_a_recorded_origin_is_compared_on_code_not_on_words() -> None:
    family = registry.resolve("cnn")
    assert family.origin.built_in and family.origin.package().startswith("mnist-hpo ")
    older = origin.Origin(origin.BUILT_IN, "mnist_hpo.families.cnn", "mnist-hpo", "0.0.1", "x")
    family_origin.check("study 'old'", family, older)  # a built-in survives an upgrade
    family_origin.check("study 'old'", family, None)  # a study from before origins
    assert origin.Origin.from_dict({"kind": "plugin"}) is None
    plugin = origin.Origin(origin.PLUGIN, "p.m", "p", "1", "a" * 64)
    assert origin.Origin.from_dict(plugin.to_dict()) == plugin
    with pytest.raises(HpoError, match=r"this machine has built-in, mnist-hpo"):
        family_origin.check("study 's'", family, plugin)


# --- The example plugin, through the whole CLI --------------------------------------------------


@pytest.mark.slow
def test_the_example_plugin_study_runs_to_completion(
    lenet5_plugin: str, tmp_path: Path, cli_env: dict[str, str], mnist_dir: Path
) -> None:
    spec = EXAMPLE_PLUGIN / "lenet5.toml"
    r = run_cli("create-study", str(spec), env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "family lenet5: plugin lenet5_family.lenet5 (package lenet5-family 0.1.0" in r.stdout
    r = run_cli("work", "lenet5", "--jobs", "2", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[w0]" in r.stdout and "[w1]" in r.stdout and "budget of 4 trials is spent" in r.stdout
    r = run_cli("status", "lenet5", env=cli_env)
    assert r.returncode == 0 and "trials: 4/4 of the budget used" in r.stdout, r.stdout
    assert "family lenet5: plugin lenet5_family.lenet5 (package lenet5-family 0.1.0" in r.stdout
    best = json.loads(run_cli("best", "lenet5", "--json", env=cli_env).stdout)
    assert best["family"] == "lenet5" and best["family_origin"]["version"] == "0.1.0"
    assert best["validation_accuracy"] > 0.8, best  # 3,000 images, 2 epochs, chance is 10%
    out = tmp_path / "lenet5.safetensors"
    r = run_cli("export-best", "lenet5", "--output", str(out), "--threads", "1", env=cli_env)
    assert r.returncode == 0, r.stderr
    r = run_cli("predict", str(out), str(mnist_dir / "t10k-images-idx3-ubyte.gz"), env=cli_env)
    assert r.returncode == 0, r.stderr
    predictions = [line for line in r.stdout.splitlines() if "ubyte.gz[" in line]
    assert len(predictions) == 10_000 and predictions[0].startswith("t10k-images-idx3-ubyte.gz[0]")
