"""The records behind RESULTS.md (benchmarks/results.py): every record in benchmarks/results.json meets the schema;
a record missing a required field, changed after it was written, or measuring what a current record measures
without superseding it is refused; a rerun appends a record that supersedes the earlier one and never overwrites it."""

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402
import timing  # noqa: E402
from results import RecordError  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MACHINE = {"cpu": "Test CPU", "isa": "AVX2", "threads": 2, "accelerator": "CPU only", "torch": "2.14.1",
           "python": "3.11.7", "probe_ms": 40.0}


def accuracy_record(**changes) -> dict:
    """A complete record of a trained model (kind accuracy), as a benchmark script passes it to ``record``."""
    entry = {
        "kind": "accuracy", "algorithm": "protonet", "config": "proto.yaml", "config_sha256": "ab" * 32,
        "dataset": "omniglot", "split": "vinyals", "settings": [], "train_seed": 0, "eval_seed": 0,
        "precision": "32-true", "batch_norm": "running",
        "train_shape": {"ways": 60, "shots": 1, "queries": 5, "tasks": 1}, "steps": 3500,
        "minutes": {"train": 20.0, "validation": 1.5, "test": 0.5}, "test_episodes": 1000, "ways": 5, "shots": 1,
        "within_alphabet": False, "inner_steps": None, "acc": 98.2, "ci95": 0.2, "commit": COMMIT,
        "machine": MACHINE, "date": "2026-12-07", "command": "python benchmarks/accuracy.py",
    }  # fmt: skip
    return {**entry, **changes}


@pytest.fixture
def files(tmp_path, monkeypatch):
    """results.json, RESULTS.md and README.md of a scratch folder, as LIGHTNING_META_RESULTS gives them."""
    for name, file in (("JSON", "results.json"), ("MARKDOWN", "RESULTS.md"), ("README", "README.md")):
        monkeypatch.setattr(results, name, tmp_path / file)
    return tmp_path


def test_every_record_of_the_project_meets_the_schema():
    records = results.load()
    results.check(records)
    assert results.legacy_count(records) == results.LEGACY_RECORDS  # the frozen records, then the protocol's
    assert all(r["schema"] in results.SCHEMAS for r in records[results.LEGACY_RECORDS:])


def test_a_legacy_record_edited_or_removed_is_refused():
    records = results.load()
    edited = copy.deepcopy(records)
    edited[0]["acc" if "acc" in edited[0] else "date"] = 0
    with pytest.raises(RecordError, match="they are frozen"):
        results.check(edited)
    with pytest.raises(RecordError, match="they are frozen"):
        results.check(records[1:])


REQUIRED = [*results.COMMON_FIELDS, *results.RUN_FIELDS,
            *(f"machine.{k}" for k in results.MACHINE_FIELDS + results.PROBE_FIELDS),
            *(f"minutes.{k}" for k in results.MINUTES_FIELDS)]


@pytest.mark.parametrize("field", [f for f in REQUIRED if f != "digest"])
def test_a_record_missing_a_required_field_is_refused(field):
    entry = results.stamped(accuracy_record(), [])
    outer, _, inner = field.partition(".")
    if inner:
        entry[outer] = {k: v for k, v in entry[outer].items() if k != inner}
    else:
        del entry[outer]
    entry["digest"] = results.digest(entry)  # so that only the missing field can be the reason
    with pytest.raises(RecordError, match=f"(record 1 .*{field}|records 1 to 1 have no schema)"):
        results.check([entry])


def test_a_record_of_schema_2_has_no_speed_probe_and_one_of_schema_3_must():
    old = {**results.stamped(accuracy_record(machine={k: MACHINE[k] for k in results.MACHINE_FIELDS}), []),
           "schema": 2}
    old["digest"] = results.digest(old)
    results.check([old])
    new = {**old, "schema": 3}
    new["digest"] = results.digest(new)
    with pytest.raises(RecordError, match="missing machine.probe_ms"):
        results.check([new])


@pytest.mark.parametrize("probe_ms, here", [(40.0, True), (49.0, True), (32.5, True), (51.0, False), (31.0, False)])
def test_a_resumed_benchmark_skips_only_what_a_machine_of_this_speed_measured(files, monkeypatch, probe_ms, here):
    """Records at this commit, on a CPU of this label, count as measured here only where their speed probe is
    within 1.25x of this machine's (40 ms): 51 ms is another, slower machine of the same label."""
    monkeypatch.setattr(results, "commit", lambda: COMMIT)
    monkeypatch.setattr(results, "machine", lambda: MACHINE)
    results.record(accuracy_record(machine={**MACHINE, "probe_ms": probe_ms}))
    assert len(results.measured_here(kind="accuracy", config="proto.yaml")) == (1 if here else 0)
    assert results.measured_here(kind="accuracy", config="maml.yaml") == []


def test_the_speed_probe_is_measured_once_per_process_and_recorded():
    probe = timing.speed_probe()
    assert probe > 0 and timing.speed_probe() == probe and results.machine()["probe_ms"] == probe


def test_a_speed_record_needs_the_common_fields_only():
    entry = {"kind": "config_speed", "algorithm": "protonet", "commit": COMMIT, "machine": MACHINE,
             "date": "2026-12-07", "command": "python benchmarks/config_speed.py", "rates": {"a": 1.0}}
    results.check([results.stamped(entry, [])])
    del entry["commit"]
    entry = results.stamped(entry, [])
    del entry["commit"]
    entry["digest"] = results.digest(entry)
    with pytest.raises(RecordError, match="missing commit"):
        results.check([entry])


def test_a_record_changed_after_it_was_written_is_refused():
    entry = results.stamped(accuracy_record(), [])
    entry["acc"] = 99.9
    with pytest.raises(RecordError, match="digest does not match"):
        results.check([entry])


@pytest.mark.parametrize("commit", ["abc123", "0123456789abcdef0123456789abcdef01234567-dirty", "unknown"])
def test_a_record_without_a_git_commit_is_refused(commit):
    with pytest.raises(RecordError, match="not a 40-digit git commit"):
        results.check([results.stamped(accuracy_record(commit=commit), [])])


def test_a_rerun_supersedes_the_earlier_record_and_never_overwrites_it(files):
    """The same measurement twice (a worse rerun): both records stay, the second names the first in
    ``supersedes``, RESULTS.md shows the second and lists the first as superseded. Before the results protocol
    ``record`` replaced the first record, so the better figure was lost."""
    results.record(accuracy_record(acc=98.2))
    first = json.loads((files / "results.json").read_text())
    results.record(accuracy_record(acc=97.1))
    records = json.loads((files / "results.json").read_text())
    assert records[0] == first[0]
    assert [r["acc"] for r in records] == [98.2, 97.1] and records[1]["supersedes"] == [1]
    results.record(accuracy_record(acc=97.5, train_seed=1))  # another seed measures something else
    records = json.loads((files / "results.json").read_text())
    assert "supersedes" not in records[2]
    assert [r["acc"] for r in results.current(records)] == [97.1, 97.5]
    markdown = (files / "RESULTS.md").read_text()
    assert "**97.10 ± 0.20**" in markdown and "**97.50 ± 0.20**" in markdown
    superseded = markdown.split("## Superseded records")[1]
    assert "| 1 | accuracy | protonet | proto.yaml | 98.20 ± 0.20 | 0123456789ab |" in superseded
    assert superseded.rstrip().endswith("| 2 |")


def test_a_duplicate_that_supersedes_nothing_is_refused(files):
    """Two current records measuring the same thing (a record added by hand beside a rerun): refused, and record()
    writes nothing then."""
    results.record(accuracy_record())
    duplicate = results.stamped(accuracy_record(acc=90.0), [])  # stamped as if the first were not there
    records = [*results.load(), duplicate]
    with pytest.raises(RecordError, match="record 2 .* measures what record 1 measured"):
        results.check(records)
    before = (files / "results.json").read_text()
    with pytest.raises(RecordError, match="missing"):
        results.record({"kind": "accuracy", "algorithm": "protonet"})
    assert (files / "results.json").read_text() == before


def test_merging_appends_the_records_written_elsewhere_as_they_were_written(files, tmp_path):
    """results.py --merge: the records of another file (a GPU machine's, an older commit's) that this one lacks are
    appended unchanged; one edited on the way, one that duplicates a current record, or one that supersedes records
    of its own file is refused, and nothing is written then."""
    results.record(accuracy_record())
    here = results.load()
    elsewhere = [*here, results.stamped(accuracy_record(train_seed=1, acc=97.4), here),
                 results.stamped(accuracy_record(train_seed=2, acc=97.9), here)]
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(elsewhere))
    assert results.merge(other) == elsewhere[1:]
    assert results.load() == elsewhere and "**97.90 ± 0.20**" in (files / "RESULTS.md").read_text()
    assert results.merge(other) == [] and results.load() == elsewhere  # merged once
    before = (files / "results.json").read_text()
    edited = results.stamped(accuracy_record(train_seed=3), [])
    edited["acc"] = 99.9  # after its digest was taken
    duplicate = results.stamped(accuracy_record(acc=90.0), [])  # measures what the first record measured
    superseding = results.stamped(accuracy_record(train_seed=4), [])
    superseding["supersedes"] = [1]
    superseding["digest"] = results.digest(superseding)
    for bad, message in ((edited, "edited after it was written"), (duplicate, "measures what record 1 measured"),
                         (superseding, "supersedes records of that file")):
        other.write_text(json.dumps([bad]))
        with pytest.raises(RecordError, match=message):
            results.merge(other)
        assert (files / "results.json").read_text() == before


def test_a_record_may_supersede_only_earlier_records():
    entry = results.stamped(accuracy_record(), [])
    entry["supersedes"] = [1]
    entry["digest"] = results.digest(entry)
    with pytest.raises(RecordError, match="only earlier records"):
        results.check([entry])


@pytest.mark.parametrize("first, target, needed", [
    ({"acc": 98.2, "ci95": 0.3}, 98.0, 3),  # 97.9 .. 98.5 holds 98.0
    ({"acc": 98.4, "ci95": 0.3}, 98.0, 2),  # 98.1 .. 98.7 is above it
    ({"acc": 97.6, "ci95": 0.3}, 98.0, 2),  # below it
    ({"acc": 85.0, "ci95": 1.0}, None, 2),  # no target
])  # fmt: skip
def test_a_headline_figure_needs_a_third_seed_where_the_first_interval_holds_the_target(first, target, needed):
    assert results.seeds_needed(first, target) == needed


def test_the_training_clock_leaves_validation_out_of_the_budget(monkeypatch, capsys):
    """A 1-minute budget: 30 s of training, 70 s of validation, then training until 60 s of training in all; the
    clock stops training at the first step past 60 s of training, not at 60 s of wall clock."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    trainer = SimpleNamespace(sanity_checking=False, should_stop=False, is_global_zero=True,
                              strategy=SimpleNamespace(broadcast=lambda decision: decision))
    clock = timing.TrainingClock(budget=1.0)
    clock.on_train_start(trainer, None)
    for t, event in [(30, "batch"), (30, "validation_start"), (100, "validation_end"), (120, "batch"),
                     (129.5, "batch")]:
        now[0] = t
        if event == "batch":
            clock.on_train_batch_end(trainer)
        else:
            getattr(clock, f"on_{event}")(trainer, None)
        assert not trainer.should_stop  # 50 s, then 59.5 s of training
    now[0] = 131.0
    clock.on_train_batch_end(trainer)
    assert trainer.should_stop  # 61 s of training, 131 s of wall clock
    clock.on_train_end(trainer, None)
    out = capsys.readouterr().out
    assert f"timed: {61 / 60:.6f} training minutes" in out and f"timed: {70 / 60:.6f} validation minutes" in out


@pytest.mark.parametrize("train_batches, shape, shown", [
    ("labelled", {"labelled_batch": 64}, "labelled batches of 64"),
    ("episodes", {"ways": 5, "shots": 1, "queries": 15, "tasks": 1}, "5-way 1-shot, 15 queries"),
])
def test_a_record_names_what_its_model_was_trained_on(tmp_path, train_batches, shape, shown):
    """A pretrain-and-evaluate config trains on labelled batches of the training classes, not on its n_way /
    k_shot episodes (those are its validation and test episodes): its record says so, and the table shows it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data = {"train_batches": train_batches, "batch_size": 64, "n_way": 5, "k_shot": 1, "n_query": 15}
    (run / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 0, "trainer": {}, "model": {},
                                                     "data": {"init_args": data}}))
    torch.save({"global_step": 10}, run / "checkpoints" / "last.ckpt")
    fields = results.run_fields(run, "baseline.yaml", [], "test/acc 90.00 ± 1.00  (omniglot/vinyals, 5-way 1-shot)",
                                0.5)
    assert fields["train_shape"] == shape
    assert results.trained_on(fields) == shown
