from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cotune.tuner.errors import SpecError
from cotune.tuner.search.replay import ReplayResult, load_kernel_tuner_cache, load_recording, replay

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "vector_add_time_energy_RTX_4000_Ada.json"


def synthetic_cache(path: Path) -> Path:
    """4x4 grid; (a=1, b=1) is absent (outside the constrained space); two configs failed."""
    cache = {}
    for a in range(4):
        for b in range(4):
            if (a, b) == (1, 1):
                continue
            t: float | str = 10.0 + a + 2 * b
            if (a, b) == (0, 0):
                t = "CompilationFailedConfig"
            if (a, b) == (3, 3):
                t = "RuntimeFailedConfig"
            cache[f"{a},{b}"] = {"a": a, "b": b, "time": t, "compile_time": 500.0, "benchmark_time": 250.0}
    doc = {"tune_params_keys": ["a", "b"], "tune_params": {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}, "cache": cache}
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    return path


def synthetic_t4(path: Path, timeunit: str = "miliseconds") -> Path:
    """synthetic_cache's grid as a T4 results file: (1, 1) fails the constraints, two configs failed."""
    scale = {"miliseconds": 1.0, "seconds": 1e-3}[timeunit]
    results = []
    for a in range(4):
        for b in range(4):
            value: float | str = (10.0 + a + 2 * b) * scale
            invalidity = {(1, 1): "constraints", (0, 0): "compile", (3, 3): "runtime"}.get((a, b), "correct")
            if invalidity == "compile":
                value = "CompilationFailedConfig"
            if invalidity == "runtime":
                value = "RuntimeFailedConfig"
            times = {"compilation": 500.0 * scale, "validation": 0, "runtimes": [125.0 * scale, 125.0 * scale]}
            results.append(
                {
                    "configuration": {"a": a, "b": b},
                    "times": times,
                    "invalidity": invalidity,
                    "correctness": int(invalidity == "correct"),
                    "measurements": [{"name": "time", "value": value, "unit": timeunit}],
                    "objectives": ["time"],
                }
            )
    with gzip.open(path, "wt") as f:
        json.dump({"schema_version": "1.0.0", "metadata": {"timeunit": timeunit}, "results": results}, f)
    return path


def test_a_t4_results_file_replays_like_the_same_kernel_tuner_cache(tmp_path):
    """T4 (the Kernel Tuner community's interchange format) holds the same recording as a cache file:
    the same configs, times, failures and tuning costs; a config failing the constraints is outside."""
    from cotune.tuner.search.replay import load_recording

    cache = load_recording(synthetic_cache(tmp_path / "c.json.gz"))
    for unit in ("miliseconds", "seconds"):
        t4 = load_recording(synthetic_t4(tmp_path / f"{unit}_T4.json.gz", unit))
        assert t4.keys == cache.keys and t4.values == {"a": (0, 1, 2, 3), "b": (0, 1, 2, 3)}
        assert set(t4.records) == set(cache.records) and (1, 1) not in t4.records
        for point, record in cache.records.items():
            assert t4.records[point].time_ms == pytest.approx(record.time_ms) if record.time_ms else True
            assert t4.records[point].failure == record.failure
            assert t4.records[point].cost_s == pytest.approx(record.cost_s)
        a, b = replay(t4, sampler="tpe", budget=15, seed=4), replay(cache, sampler="tpe", budget=15, seed=4)
        assert a.best_so_far == pytest.approx(b.best_so_far) and a.failed == b.failed == 2


def test_a_t4_file_with_a_throughput_objective_replays_its_time_or_is_refused(tmp_path):
    """Replay minimises time. A T4 file whose objective is GFLOP/s, higher is better, still holds the time
    of each config, and that is what is replayed; one that holds only GFLOP/s is refused, not minimised."""
    plain = load_recording(synthetic_t4(tmp_path / "plain_T4.json.gz"))
    doc = json.load(gzip.open(synthetic_t4(tmp_path / "t.json.gz"), "rt"))
    for result in doc["results"]:
        time = result["measurements"][0]["value"]
        flops = 1e3 / time if isinstance(time, float) else time
        result["measurements"].insert(0, {"name": "GFLOP/s", "value": flops, "unit": "GFLOP/s"})
        result["objectives"] = ["GFLOP/s"]
    both = tmp_path / "throughput_T4.json"
    both.write_text(json.dumps(doc))
    assert load_recording(both).records == plain.records and load_recording(both).optimum == 10.0 + 1
    for result in doc["results"]:
        result["measurements"] = result["measurements"][:1]
    only = tmp_path / "throughput_only_T4.json"
    only.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match="measures 'GFLOP/s' in 'GFLOP/s' and no 'time'; replay minimises a time"):
        load_recording(only)


def test_an_older_kernel_tuner_cache_s_1e20_times_are_failures(tmp_path):
    """Kernel Tuner releases before the failure markers cached a failed config with time 1e20. Read as a
    time, it would be measured as a success and swamp the sampler's log-time model; it is a failure."""
    doc = json.load(gzip.open(synthetic_cache(tmp_path / "c.json.gz"), "rt"))
    doc["cache"]["0,0"]["time"] = 1e20
    doc["cache"]["3,3"]["time"] = 1e20
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    data = load_recording(old)
    assert data.records[(0, 0)].time_ms is None and "older Kernel Tuner" in data.records[(0, 0)].failure
    assert data.optimum == 11.0
    result = replay(data, sampler="cotune", budget=15, seed=0)
    assert result.failed == 2 and result.best_so_far[-1] == 11.0


def as_kernel_tuner_writes_it(doc: dict) -> str:
    """A cache's text as Kernel Tuner writes it during a run: the header, then one entry per line, each
    followed by a comma; ``close_cache`` turns the last comma into the closing braces when the run ends."""
    header = json.dumps({k: v for k, v in doc.items() if k != "cache"}, indent="")[:-2] + ',\n"cache": {'
    return header + "".join("\n" + json.dumps({k: v})[1:-1] + "," for k, v in doc["cache"].items())


def test_an_interrupted_run_s_open_cache_is_read_as_kernel_tuner_reads_it(tmp_path, capsys):
    """A brute-force run that was stopped leaves its cache open: not valid JSON, yet Kernel Tuner reads it,
    and so must replay. If the run died mid-write, the cut entry is left out and every whole one is kept."""
    doc = json.load(gzip.open(synthetic_cache(tmp_path / "c.json.gz"), "rt"))
    closed = load_recording(tmp_path / "c.json.gz")
    text = as_kernel_tuner_writes_it(doc)
    (tmp_path / "open.json").write_text(text)
    opened = load_recording(tmp_path / "open.json")
    assert opened.records == closed.records and opened.notes and "never closed" in opened.notes[0]
    assert not closed.notes
    (tmp_path / "cut.json").write_text(text[:-30])
    cut = load_recording(tmp_path / "cut.json")
    last = (3, 3)  # the cache's last entry
    assert set(cut.records) == set(closed.records) - {last} and "cut off mid-write" in cut.notes[0]
    from cotune.tuner.cli.main import app
    from typer.testing import CliRunner

    run = CliRunner().invoke(app, ["replay", str(tmp_path / "cut.json"), "--budget", "5", "--json"])
    assert run.exit_code == 0 and json.loads(run.stdout)["optimum"] == 11.0
    assert "cut off mid-write" in run.stderr
    (tmp_path / "empty.json").write_text(text[: text.index('"cache": {') + len('"cache": {')])  # no entry yet
    with pytest.raises(SpecError, match="holds no successful measurement"):
        load_recording(tmp_path / "empty.json")
    (tmp_path / "garbage.json").write_text(text[: text.index('"cache"') - 5])  # the header itself is cut
    with pytest.raises(SpecError, match="not a recording"):
        load_recording(tmp_path / "garbage.json")


def test_kernel_tuner_s_other_marks_in_a_cache(tmp_path):
    """Kernel Tuner marks an entry as an error wherever a field holds a marker, not only its time, and
    marks a config it never launched (too many threads per block) InvalidConfig: outside the space, like a
    config absent from the cache, so it costs no evaluation."""
    doc = json.load(gzip.open(synthetic_cache(tmp_path / "c.json.gz"), "rt"))
    doc["cache"]["2,0"]["GFLOP/s"] = "RuntimeFailedConfig"  # time numeric, the other objective marked
    doc["cache"]["3,0"]["time"] = "InvalidConfig"
    doc["cache"]["0,1"]["time"] = "ErrorConfig"
    (tmp_path / "marks.json").write_text(json.dumps(doc))
    data = load_recording(tmp_path / "marks.json")
    assert data.records[(2, 0)].failure == "RuntimeFailedConfig" and data.records[(2, 0)].time_ms is None
    assert data.records[(0, 1)].failure == "ErrorConfig"
    assert (3, 0) not in data.records and "outside the space: 1 configs marked InvalidConfig" in data.notes[0]
    result = replay(data, sampler="random", budget=100, seed=0)
    assert len(result.best_so_far) == 14 and result.failed == 4 and (3, 0) not in result.evaluated


def test_a_zero_or_negative_time_is_a_failure_not_the_optimum(tmp_path):
    """A recorded time of 0 (a kernel that did no work, a broken timer) would be the file's optimum and make
    every best/optimum ratio infinite; in a cache or a T4 file it is a failed config, with its value said."""
    doc = json.load(gzip.open(synthetic_cache(tmp_path / "c.json.gz"), "rt"))
    doc["cache"]["0,1"]["time"] = 0.0
    doc["cache"]["2,0"]["time"] = -1.0
    (tmp_path / "zero.json").write_text(json.dumps(doc))
    t4 = json.load(gzip.open(synthetic_t4(tmp_path / "t_T4.json.gz"), "rt"))
    t4["results"][1]["measurements"][0]["value"] = 0  # (0, 1)
    t4["results"][8]["measurements"][0]["value"] = -1.0  # (2, 0)
    (tmp_path / "zero_T4.json").write_text(json.dumps(t4))
    for name in ("zero.json", "zero_T4.json"):
        data = load_recording(tmp_path / name)
        assert data.optimum == 11.0 and data.records[(0, 1)].time_ms is None
        assert data.records[(0, 1)].failure.endswith(" 0.0") or data.records[(0, 1)].failure.endswith(" 0")
        assert data.records[(2, 0)].time_ms is None and "-1.0" in data.records[(2, 0)].failure


def test_brute_force_budget_reproduces_the_optimum(tmp_path):
    data = load_kernel_tuner_cache(synthetic_cache(tmp_path / "c.json.gz"))
    assert data.optimum == 11.0  # (a=1, b=0); (0, 0) would be 10 but failed
    result = replay(data, sampler="random", budget=1000, seed=3)
    assert len(result.best_so_far) == 15  # every cached config once, failures included
    assert sorted(result.evaluated) == sorted(data.records)
    assert result.best_so_far[-1] == data.optimum
    assert result.failed == 2 and result.evaluations_to_within(0.0) is not None


def test_recorded_failures_are_evaluations_without_a_value(tmp_path):
    data = load_kernel_tuner_cache(synthetic_cache(tmp_path / "c.json.gz"))
    assert data.records[(0, 0)].failure == "CompilationFailedConfig"
    result = replay(data, sampler="random", budget=15, seed=0)
    bests = result.best_so_far
    assert all(b is None or b >= data.optimum for b in bests)
    values = [b for b in bests if b is not None]
    assert values == sorted(values, reverse=True)  # best-so-far never gets worse
    assert bests.index(values[0]) == bests.count(None)  # None only before the first success
    assert result.simulated_time_s == pytest.approx(15 * 0.75)


def test_seeds_make_runs_reproducible():
    data = load_kernel_tuner_cache(FIXTURE)
    a = replay(data, budget=10, seed=7).to_json()
    b = replay(data, budget=10, seed=7).to_json()
    assert a == b and a["optimum"] == pytest.approx(2.9767550006508827)


def test_improvements_are_the_steps_of_the_best_so_far():
    # a failed first evaluation has no best yet; repeats of the best are not steps
    result = ReplayResult(1.0, best_so_far=[None, 3.0, 3.0, 2.0, 2.0, 1.0])
    assert result.improvements() == [(2, 3.0), (4, 2.0), (6, 1.0)]


def test_cli_json_and_bad_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "replay", str(FIXTURE), "--budget", "15", "--seed", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["best_so_far"]) == 15 and out["best_so_far"][-1] == out["optimum"]
    for budget in ("15", "2"):  # the optimum reached in the first, not within 5 % in the second (seed 1)
        args = [sys.executable, "-m", "cotune.tuner.cli", "replay", str(FIXTURE), "--budget", budget, "--seed", "1"]
        reached = json.loads(subprocess.run([*args, "--json"], capture_output=True, text=True).stdout)
        text = subprocess.run(args, capture_output=True, text=True).stdout
        for pct, n in reached["evaluations_to_within"].items():
            said = f"after {n} evaluations" if n else f"not reached in {budget} evaluations"
            assert f"within {pct} of the optimum: {said}\n" in text, text
        # the best-so-far curve, printed where it changes
        curve = reached["best_so_far"]
        changed = [
            n
            for n in range(1, len(curve) + 1)
            if curve[n - 1] is not None and (n == 1 or curve[n - 2] is None or curve[n - 1] < curve[n - 2])
        ]
        assert [int(line.split()[1].rstrip(":")) for line in text.splitlines() if "evaluation " in line] == changed
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "replay", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "not a Kernel Tuner cache file" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "replay", str(FIXTURE), "--related", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "bad.json: not a Kernel Tuner cache file" in proc.stderr
    (tmp_path / "no_time.json").write_text(
        '{"tune_params_keys": ["a"], "tune_params": {"a": [1]}, "cache": {"1": {"a": 1, "GFLOP/s": 3.0}}}'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "replay", str(tmp_path / "no_time.json")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "cache entry '1' is malformed (KeyError: 'time')" in proc.stderr
    (tmp_path / "list_value.json").write_text(
        '{"tune_params_keys": ["a"], "tune_params": {"a": [[1, 2]]}, "cache": {"1,2": {"a": [1, 2], "time": 3.0}}}'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "replay", str(tmp_path / "list_value.json")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "param 'a' has the value [1, 2]" in proc.stderr
    empty_t4 = tmp_path / "empty_T4.json"
    empty_t4.write_text('{"schema_version": "1.0.0", "results": []}')
    proc = subprocess.run(
        [sys.executable, "-m", "cotune.tuner.cli", "replay", str(empty_t4)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "empty_T4.json: not a T4 results file" in proc.stderr


def test_a_related_recording_is_modelled_not_measured(tmp_path):
    """--related feeds another recording's times to the sampler's model; it costs no evaluation."""
    data = load_kernel_tuner_cache(synthetic_cache(tmp_path / "c.json.gz"))
    assert len(data.records) == 15
    runs = [
        (
            replay(data, sampler="cotune", budget=14, seed=s),
            replay(data, sampler="cotune", budget=14, seed=s, related=[data]),
        )
        for s in range(4)
    ]
    # within a budget below the space's size, the related recording costs no evaluation ...
    assert all(len(alone.best_so_far) == len(helped.best_so_far) == 14 for alone, helped in runs)
    # ... and reaches the model: once the random start (10) is over, the same seeds propose other configs
    assert any(alone.evaluated != helped.evaluated for alone, helped in runs)


def test_unknown_sampler_is_rejected():
    data = load_kernel_tuner_cache(FIXTURE)
    with pytest.raises(ValueError, match="unknown sampler"):
        replay(data, sampler="magic")
    with pytest.raises(SpecError):
        load_kernel_tuner_cache(DATA / "crash_space.yaml")


def test_replays_a_cotune_trial_table(tmp_path, tune_one):
    """The trials.csv of a real local study replays: its measured configs, its best as the optimum."""
    from cotune.tuner.search.replay import load_recording

    outcome, study, _ = tune_one(
        "name: table\nkernel: noop\nproblems: [{sleep_ms: 1}]\nbudget: {trials: 8}\n"
        "sampler: {name: random, seed: 0}\ntop_k: 1\nbench: {warmup: 0, repeats: 1, remeasure_repeats: 1}\n"
    )
    study.trials_dataframe().to_csv(tmp_path / "trials.csv", index=False)

    data = load_recording(tmp_path / "trials.csv")
    assert set(data.keys) == {"x", "y"} and len(data.records) == outcome.measured
    assert data.optimum == pytest.approx(min(t.value for t in study.trials if t.value is not None) * 1e3)
    result = replay(data, sampler="random", budget=100, seed=1)
    assert len(result.best_so_far) == outcome.measured and result.best_so_far[-1] == data.optimum


def test_a_throughput_study_s_trial_table_replays_its_times(tmp_path, tune_one):
    """Replay minimises time. A max_throughput study tells Optuna GFLOP/s, higher is better; its trial table
    still holds each trial's measured times, and those are replayed, so the optimum is the fastest config."""
    from cotune.tuner.measure.trial_record import record
    from cotune.tuner.search.replay import load_recording
    from cotune.tuner.types import Measurement

    outcome, study, _ = tune_one(
        "name: flops\nkernel: c_matmul\nproblems: [{M: 32, N: 32, K: 32}]\nobjective: max_throughput\n"
        "budget: {trials: 6}\nsampler: {name: random, seed: 0}\ntop_k: 1\n"
        "bench: {warmup: 0, repeats: 1, remeasure_repeats: 1}\n"
    )
    study.trials_dataframe().to_csv(tmp_path / "trials.csv", index=False)
    data = load_recording(tmp_path / "trials.csv")
    times = [Measurement.from_json(record(t)["measurement"]).median_s * 1e3 for t in study.trials if t.value]
    assert len(data.records) == outcome.measured == len(times)
    assert sorted(r.time_ms for r in data.records.values()) == pytest.approx(sorted(times))
    assert data.optimum == pytest.approx(min(times))


def test_same_program_replays_each_program_once_as_a_study_does(tmp_path):
    """A cotune recording names its kernel and problem, so a replay can measure each program once
    (Kernel.program_key): at M=16 a Triton matmul's four GROUP_M values are one program, 2,688 configs 672."""
    h100 = Path(__file__).parents[1] / "bench" / "results" / "replay_h100"
    data = load_recording(h100 / "triton_matmul_fp8_K8192_M16_N8192_nvidia-h100-80gb-hbm3.json.gz")
    assert (data.kernel, data.problem, data.precision) == ("triton_matmul", {"K": 8192, "M": 16, "N": 8192}, "fp8")
    program = data.program_key()
    assert len({program(p) for p in data.records}) == 744
    run = replay(data, sampler="random", budget=300, seed=3, same_program=True)
    assert len(run.best_so_far) == len({program(p) for p in run.evaluated}) == len(run.evaluated) == 300
    assert run.duplicates > 0  # proposed twins of measured programs were given their measurement, not counted
    plain = replay(data, sampler="random", budget=300, seed=3)
    assert len({program(p) for p in plain.evaluated}) < 300  # without it, twins cost evaluations

    with pytest.raises(SpecError, match="names no cotune kernel and problem"):
        replay(load_kernel_tuner_cache(synthetic_cache(tmp_path / "kt.json.gz")), same_program=True)


def test_the_cli_replays_a_cotune_recording_as_a_study_would(tmp_path):
    """``cotune replay`` measures each program once where the file names its kernel (``--configs`` turns it
    off), and refuses ``--programs`` on a file that names none."""
    h100 = Path(__file__).parents[1] / "bench" / "results" / "replay_h100"
    path = h100 / "triton_matmul_fp8_K8192_M16_N8192_nvidia-h100-80gb-hbm3.json.gz"
    data = load_recording(path)
    program = data.program_key()
    base = [sys.executable, "-m", "cotune.tuner.cli", "replay", str(path), "--sampler", "random", "--budget", "300"]
    runs = {}
    for flag in ("", "--configs"):
        proc = subprocess.run([*base, "--seed", "3", "--json", *filter(None, [flag])], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        runs[flag] = json.loads(proc.stdout)
    assert runs[""]["best_so_far"] == replay(data, sampler="random", budget=300, seed=3, same_program=True).best_so_far
    assert runs["--configs"]["best_so_far"] == replay(data, sampler="random", budget=300, seed=3).best_so_far
    assert len({program(p) for p in data.records}) == 744  # so 300 programs exist to measure
    kt = synthetic_cache(tmp_path / "kt.json.gz")
    proc = subprocess.run([*base[:4], str(kt), "--programs"], capture_output=True, text=True)
    assert proc.returncode == 1 and "names no cotune kernel and problem" in proc.stderr


def test_a_t4_metadata_file_is_refused_with_the_file_to_replay_instead(tmp_path):
    path = tmp_path / "run-metadata.json"
    path.write_text(json.dumps({"metadata": {"operating_system": "Linux"}, "schema_version": "1.0.0"}))
    with pytest.raises(SpecError, match="T4 metadata file.*NAME-results.json"):
        load_recording(path)
