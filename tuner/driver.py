"""The local study driver: one Optuna study per (job, problem, device), ask/tell around the objective,
then a re-measure of the top-k configs with more repeats to pick the winner.

Studies are resumable: running the same job again continues each study up to its budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

from cotune.tuner.codesign.pareto import front, front_json, select
from cotune.tuner.measure.isolation import CandidateRunner
from cotune.tuner.measure.kernel import Kernel
from cotune.tuner.measure.objective import TrialObjective, TrialResult, directions, primary
from cotune.tuner.measure.precompile import Precompiler
from cotune.tuner.measure.registry import get_kernel
from cotune.tuner.measure.trial_record import counted, fail_lost_trial, record, result_from_trial, tell
from cotune.tuner.search.samplers import make_sampler
from cotune.tuner.search.stopping import StallDetector
from cotune.tuner.search.transfer import (
    TABLE_AGREEMENT,
    first_configs,
    neighbour_trials,
    table_neighbours,
    table_order,
)
from cotune.tuner.space.search_space import SearchSpace, load_space
from cotune.tuner.spec.job import JobSpec
from cotune.tuner.store.reservations import ProgramReservations
from cotune.tuner.store.studies import open_storage
from cotune.tuner.track.tracker import BestLog, StudyInfo, Tracker, TrialLog, run_names
from cotune.tuner.types import (
    Config,
    DeviceProfile,
    Failure,
    FailureKind,
    Measurement,
    Objective,
    Problem,
    TrialStatus,
)

# Stop asking when this many proposals in a row were infeasible or already measured.
MAX_IDLE_PROPOSALS = 200
SPACE_ENUMERATION_LIMIT = 1_000_000


@dataclass(frozen=True)
class Progress:
    problem: Problem
    measured: int
    budget: int | None
    best_value: float | None
    last: TrialResult


@dataclass(frozen=True)
class StudyOutcome:
    problem: Problem
    study_name: str
    measured: int
    failed: int
    pruned: int
    best: BestLog | None
    mlflow_run_id: str | None
    search: dict[str, int | None] | None = None  # StudySession.search_cost(): spent against exhaustive
    infeasible: str | None = None  # why nothing could be measured, when no config of the space fits


def study_name(job: str, problem: Problem, device: DeviceProfile) -> str:
    return f"{job}:{problem.key}:{device.slug}"


def tune_job(
    spec: JobSpec,
    storage_url: str,
    device: DeviceProfile,
    tracker: Tracker,
    on_progress: Callable[[Progress], None] | None = None,
    priors: dict[str, list[Config]] | None = None,
) -> list[StudyOutcome]:
    """Tune every problem of the job. ``priors`` maps a problem key to configs measured first (warm start:
    earlier winners, via Optuna's ``enqueue_trial``), unless the study already holds them."""
    kernel = get_kernel(spec.kernel)
    # one compile pool for the whole job: starting its processes costs seconds per problem otherwise; it and
    # the candidate process start first and load the kernel's toolchain while the study is set up
    workers = spec.bench.compile_workers if kernel.precompiles else 0
    problems = spec.expand()
    if spec.budget.table_patience:
        problems = table_order(problems, kernel.batch_dim)
    with (
        CandidateRunner(warm=kernel.name) as runner,
        Precompiler(workers, warm=kernel.name) if workers else nullcontext() as precompiler,
    ):
        storage = open_storage(storage_url)
        space = job_space(spec, kernel)
        tracker.start_job(spec.name)
        outcomes = []
        for problem in problems:
            name = study_name(spec.name, problem, device)
            session = StudySession(spec, kernel, space, problem, device, storage, runner, tracker, name)
            session.fail_stale_running()
            budget = session.feasible_budget()
            if budget is None or session.objective.measured < budget:  # a finished study asks nothing more
                warm = list((priors or {}).get(problem.key, []))
                if spec.budget.table_patience:
                    warm += session.settle_table_row(storage)
                warm += first_configs(storage, spec, kernel, space, problem, device, budget)
                session.enqueue(warm)
            outcomes.append(_tune_problem(session, on_progress, precompiler))
        tracker.close()
    return outcomes


def feasible_programs(
    kernel: Kernel, space: SearchSpace, problem: Problem, device: DeviceProfile
) -> dict[str, Config] | None:
    """The first feasible config of each program (``Kernel.program_key``), by program key; None when the
    space is too large to enumerate."""
    if space.size > SPACE_ENUMERATION_LIMIT:
        return None
    programs: dict[str, Config] = {}
    for config in space.feasible_points(problem, device):
        programs.setdefault(kernel.program_key(problem, config), config)
    return programs


def why_infeasible(space: SearchSpace, problem: Problem, device: DeviceProfile) -> str:
    """Why no config of the space is feasible for the problem on the device: the constraints that rule
    configs out, most first, with how many each rules out."""
    from collections import Counter

    reasons: Counter[str] = Counter()
    for config in space.points():
        reason = space.violation(config, problem, device)
        if reason:
            reasons[reason.split(" (")[0].split(":")[0]] += 1
    top = ", ".join(f"{name} ({n} of {space.size})" for name, n in reasons.most_common(3))
    return f"no config of the space is feasible for {problem.key} on {device.name}: ruled out by {top}"


def job_space(spec: JobSpec, kernel: Kernel) -> SearchSpace:
    if spec.search_space:
        return load_space(spec.search_space, predicates=kernel.predicates, shape_dims=kernel.shape_dims)
    return kernel.space()


class StudySession:
    """One study's tuning state (study, objective, tracker), stepped by the local loop or by a worker task.

    Both drivers go through :meth:`step`, so a trial is asked, screened, measured, recorded and told the
    same way whether it runs in ``cotune tune`` or on a service worker.
    """

    def __init__(
        self,
        spec: JobSpec,
        kernel: Kernel,
        space: SearchSpace,
        problem: Problem,
        device: DeviceProfile,
        storage,
        runner: CandidateRunner,
        tracker: Tracker,
        name: str,
        job: str | None = None,
        parallel: bool = False,
        reservations: ProgramReservations | None = None,
    ) -> None:
        """``job`` labels the study for ``status``/``export``: the spec's name locally, the job id in service.
        ``parallel`` is set when other processes ask the same study at the same time; they then reserve each
        program before measuring it in ``reservations`` (service workers), so no two measure one program."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.kernel, self.space, self.problem, self.device = spec, kernel, space, problem, device
        self.tracker = tracker
        self.name = name
        self.parallel = parallel
        self.reservations = reservations
        self._lost: set[int] = set()  # trials failed as worker_lost: their reservations may be taken over
        self._distributions = space.distributions()
        programs = feasible_programs(kernel, space, problem, device)
        # one config per program: the sampler never proposes a copy of another
        feasible = None if programs is None else list(programs.values())
        self._programs: set[str] | None = None if programs is None else set(programs)
        # why no config of the space can run this problem here; None while any can
        self.infeasible: str | None = None if programs != {} else why_infeasible(space, problem, device)
        # the cotune sampler models one objective; Optuna's TPE handles a Pareto front
        sampler_name = "tpe" if spec.objective.multi and spec.sampler.name == "cotune" else spec.sampler.name
        if self.infeasible:
            sampler_name, feasible = "random", None  # it is never asked: the budget is zero
        related = []
        if spec.sampler.transfer_model and sampler_name == "cotune" and feasible is not None:
            maximize = directions(spec.objective) == ["maximize"]
            related = neighbour_trials(
                storage, problem, device, kernel.batch_dim, spec.objective.value, maximize=maximize
            )
        sampler = make_sampler(
            sampler_name,
            spec.sampler.seed,
            parallel=parallel,
            candidates=None if feasible is None else [c.values for c in feasible],
            distributions=self._distributions,
            related=related,
        )
        self.study = optuna.create_study(
            storage=storage,
            study_name=name,
            directions=directions(spec.objective),
            sampler=sampler,
            load_if_exists=True,
        )
        tags = {
            "cotune.source_hash": kernel.source_hash,
            "cotune.space": space.source,
            **{f"cotune.toolchain.{k}": v for k, v in kernel.toolchain().items()},
        }
        run_name = run_names(spec.expand()).get(problem.key)
        self.run_id = tracker.start_study(StudyInfo(spec.name, name, problem, device, tags, run_name))
        attrs = {
            "job": job or spec.name,
            "problem": problem.to_json(),
            "device": device.to_json(),
            "mlflow_run_id": self.run_id,
            "source_hash": kernel.source_hash,
            "toolchain": kernel.toolchain(),
            "objective": spec.objective.value,
            "accuracy_bound": spec.accuracy_bound,
        }
        if self.run_id is None:  # no tracker here now (MLflow down on a worker): keep the run made at submit
            del attrs["mlflow_run_id"]
        existing = self.study.user_attrs
        for key, value in attrs.items():
            if existing.get(key) != value:  # each write is a transaction on a shared storage
                self.study.set_user_attr(key, value)
        bench = spec.bench.settings(energy=spec.objective.uses_energy)
        self.objective = TrialObjective(
            space, problem, device, runner, bench, program_key=lambda config: kernel.program_key(problem, config)
        )
        self.patience = spec.budget.patience  # a table row between agreeing neighbours gets a shorter one
        self._table_winners: list[Config] = []  # a table row's neighbours' winners, until both are measured
        self.tracked = False  # set by finish(): whether the tracker holds the whole study
        self.precompiler: Precompiler | None = None
        self._ahead: deque = deque()  # trials asked ahead, their configs compiling in the precompiler
        # the trial :meth:`step` has asked and not yet told: what a worker fails when its task is cut mid-step
        self.stepping: int | None = None
        self.refresh()

    def refresh(self, asked: int | None = None) -> None:
        """Load what other processes measured (and are measuring) so no config is measured twice.

        ``asked``: the trial this process just asked. With reservations, a program is in flight while the
        running trial that reserved it runs. Without (parallel sessions on a storage with no reservations),
        only trials asked before ``asked`` count, so the earlier of two simultaneous asks measures; a
        trial whose params Optuna has not written yet is missed there, which reservations close.
        """
        from optuna.trial import TrialState

        in_flight: dict[str, int] = {}
        running: set[int] = set()
        lost: set[int] = set()
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.FAIL):
                stored = record(t)
                if stored.get("failure_kind") == FailureKind.WORKER_LOST.value:
                    lost.add(t.number)
                elif "duplicate_of" not in stored:
                    self.objective.remember(t.number, result_from_trial(t))
            elif t.state is TrialState.RUNNING and t.number != asked:
                running.add(t.number)
                if self.reservations is None and t.params and (asked is None or t.number < asked):
                    in_flight.setdefault(self.objective.program_key(Config.make(t.params)), t.number)
        if self.reservations is not None:
            in_flight = self.reservations.held(among=running)
        self.objective.in_flight = in_flight
        self._lost = lost

    def _reserve(self, number: int, config: Config) -> TrialResult | None:
        """Reserve the config's program for trial ``number`` before measuring it: None when reserved, else the
        result of the trial that holds it (measured, or in flight)."""
        program = self.objective.program_key(config)
        holder = None
        for _ in range(2):  # a second try once the holder is seen lost
            holder = self.reservations.reserve(program, number, lost=self._lost)
            if holder is None:
                return None
            self.refresh(asked=number)  # the holder may have finished, or been lost, since the last look
            screened = self.objective.screen(config)
            if screened is not None:
                return screened
            if holder not in self._lost:
                break
        failure = Failure(FailureKind.IN_FLIGHT, f"trial {holder} is measuring this config's program")
        return TrialResult(config, TrialStatus.PRUNED, failure=failure, duplicate_of=holder)

    def enqueue(self, configs: list[Config]) -> None:
        """Have these configs asked first, skipping any the study has already asked."""
        asked = {Config.make(t.params).key for t in self.study.get_trials(deepcopy=False) if t.params}
        for config in configs:
            if config.key not in asked:
                self.study.enqueue_trial(config.values, skip_if_exists=True)
                asked.add(config.key)

    def fail_stale_running(self) -> None:
        """Local mode only: a RUNNING trial here was left by a run that died, never by a live one."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_lost_trial(self.study, t.number, "left RUNNING by an earlier run that stopped")

    def settle_table_row(self, storage) -> list[Config]:  # noqa: ANN001 - an Optuna storage
        """For a batch size of a table (``budget.table_patience``): the winners of its tuned neighbours, to be
        measured first. Once both are measured here (:meth:`_judge_table_row`), the row knows whether the table
        still changes at this batch size."""
        below, above = table_neighbours(
            storage, self.problem, self.device, self.kernel.batch_dim, self.spec.objective.value
        )
        neighbours = [
            c for c in (below, above) if c is not None and self.space.violation(c, self.problem, self.device) is None
        ]
        # a neighbour's winner that cannot run here means the table changes here
        both = below is not None and above is not None and len(neighbours) == 2
        self._table_winners = list(dict.fromkeys(neighbours)) if both else []
        self.study.set_user_attr("table_row", {"neighbours_agree": None if self._table_winners else False})
        return list(dict.fromkeys(neighbours))

    def _judge_table_row(self) -> None:
        """Where the two neighbours' winners, measured at this batch size, are within TABLE_AGREEMENT of each
        other (or run one program), the table does not change here: this batch size stops after
        ``table_patience`` evaluations without a 1 % gain instead of spending its whole budget. Where they
        differ, it keeps its budget."""
        measured = [self.objective.result_of(c) for c in self._table_winners]
        if any(m is None for m in measured):
            return  # not both measured yet
        self._table_winners = []
        times = [r.measurement.median_s for r in measured if r.measurement is not None]
        agree = len(times) == len(measured) and max(times) <= min(times) * (1 + TABLE_AGREEMENT)
        if agree:
            table = self.spec.budget.table_patience
            self.patience = min(self.patience, table) if self.patience else table
        gap = max(times) / min(times) - 1 if len(times) == len(measured) else None
        self.study.set_user_attr("table_row", {"neighbours_agree": agree, "gap": gap, "patience": self.patience})

    def feasible_budget(self) -> int | None:
        budget = self.spec.budget.trials
        if self._programs is not None:
            budget = min(budget, len(self._programs)) if budget else len(self._programs)
        return budget

    def step(self, on_measure: Callable[[int], None] | None = None) -> TrialResult:
        """Ask one trial, screen it, measure it if needed, record and tell it."""
        trial = self._ahead.popleft() if self._ahead else self.study.ask(self._distributions)
        self.stepping = trial.number
        config = Config.make(trial.params)
        if self.parallel:
            self.refresh(asked=trial.number)
        self._ask_ahead()
        result = self.objective.screen(config)
        if result is None and self.reservations is not None:
            result = self._reserve(trial.number, config)
        if result is None:
            if on_measure is not None:
                on_measure(trial.number)
            failure = (
                self.precompiler.result(self.problem, config, self.objective.bench.timeout_s)
                if self.precompiler
                else None
            )
            if failure is not None:
                result = TrialResult(config, TrialStatus.FAIL, failure=failure)
            else:
                result = self.objective.measure_trial(config)
        tell(self.study, trial, result, self.spec.objective)
        self.stepping = None
        self.objective.remember(trial.number, result)
        self.tracker.log_trial(
            TrialLog(
                trial.number,
                config,
                result.status,
                primary(result.measurement, self.spec.objective) if result.measurement else None,
                result.measurement,
                result.reason,
                result.duplicate_of,
                result.duration_s,
            )
        )
        return result

    def _ask_ahead(self) -> None:
        """Keep as many trials asked as the precompiler has processes, their configs compiling meanwhile."""
        if self.precompiler is None:
            return
        while len(self._ahead) < self.precompiler.workers:
            trial = self.study.ask(self._distributions)
            config = Config.make(trial.params)
            if self.objective.screen(config) is None:
                self.precompiler.submit(self.problem, config, self.device)
            self._ahead.append(trial)

    def drop_ahead(self) -> None:
        """Close trials asked ahead that the study stopped before measuring. Told PRUNED with no cotune
        record, so they count as no evaluation and a resumed study may propose their configs again."""
        from optuna.trial import TrialState

        while self._ahead:
            trial = self._ahead.popleft()
            trial.set_user_attr("not_measured", "asked ahead for compilation; the study stopped first")
            self.study.tell(trial, state=TrialState.PRUNED)

    def step_until_measured(self, on_measure: Callable[[int], None] | None = None) -> TrialResult | None:
        """Step until one new config was measured; None when the space yields nothing new."""
        for _ in range(MAX_IDLE_PROPOSALS):
            result = self.step(on_measure)
            if not _idle(result):
                return result
            if self.exhausted():
                return None
        return None

    def exhausted(self) -> bool:
        """Every feasible program is measured, failed or being measured, so no ask can measure a new one.
        Without it a ticket past the space's size would ask (and store) up to MAX_IDLE_PROPOSALS repeats."""
        return self._programs is not None and self._programs <= self.objective.accounted()

    def stalled(self) -> bool:
        """Whether the study's last ``budget.patience`` evaluations, in the order they finished, gained less
        than 1 % on the best before them. Read from the study, so every worker of a service job agrees."""
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        if self._table_winners:
            self._judge_table_row()
        if not self.patience:
            return False
        minimize = self.study.direction is StudyDirection.MINIMIZE
        detector = StallDetector(self.patience, minimize=minimize)
        evaluated = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            if counted(t)
        ]
        best: float | None = None
        stalled = False
        for t in sorted(evaluated, key=lambda t: (t.datetime_complete, t.number)):
            if t.state is TrialState.COMPLETE:
                best = t.value if best is None else (min if minimize else max)(best, t.value)
            stalled = detector.update(best)
        return stalled

    def finish(self) -> BestLog | None:
        if self.spec.objective.multi:
            pareto = front(_remeasure(_front_trials(self.study), self.objective, self.spec))
            best = select(pareto, self.spec.selection.policy, self.spec.selection.energy_slack)
            self.study.set_user_attr("pareto_front", front_json(pareto))
        else:
            best = _remeasure(_top_k_trials(self.study, self.spec), self.objective, self.spec)
            best = min(best, key=lambda b: _rank(b.remeasured, self.spec.objective), default=None)
        if best is not None:
            self.study.set_user_attr("best", best.to_json())
            baselines = self._remeasure_baselines(best)
            if baselines:
                self.study.set_user_attr("baselines", baselines)
        self.study.set_user_attr("search", self.search_cost())
        # whether the tracker holds the whole study now; a service worker marks it so in its job store
        self.tracked = self.tracker.finish_study(best, self.study)
        return best

    def _remeasure_baselines(self, best: BestLog) -> dict[str, dict]:
        """The kernel's baselines (``Kernel.baselines``), each measured as the winner was re-measured, right
        after it, so tuned and baseline times come from the same process, repeats and machine state. A
        baseline that runs the winner's program is the winner's own measurement."""
        out: dict[str, dict] = {}
        winner = self.kernel.program_key(self.problem, best.config)
        bench = replace(self.objective.bench, repeats=self.spec.bench.remeasure_repeats)
        for name, config in self.kernel.baselines(self.problem, self.device).items():
            if self.kernel.program_key(self.problem, config) == winner:
                out[name] = {"config": config.values, "measurement": best.remeasured.to_json(), "is_winner": True}
                continue
            reason = self.space.violation(config, self.problem, self.device)  # off the grid is fine, not this
            if reason:
                out[name] = {"config": config.values, "failure": f"infeasible here: {reason}"}
                continue
            result = self.objective.measure(config, bench)
            if result.measurement is not None:
                out[name] = {"config": config.values, "measurement": result.measurement.to_json()}
            else:
                out[name] = {"config": config.values, "failure": result.reason}
        return out

    def search_cost(self) -> dict[str, int | None]:
        """What the search spent against what an exhaustive sweep would: distinct evaluations, the feasible
        programs of the space on this device (None when too large to enumerate) and the grid's size."""
        evaluated = sum(n for status, n in self.counts().items() if status is not TrialStatus.PRUNED)
        programs = None if self._programs is None else len(self._programs)
        return {"evaluations": evaluated, "programs": programs, "grid": self.space.size}

    def counts(self) -> dict[TrialStatus, int]:
        counts = dict.fromkeys(TrialStatus, 0)
        for t in self.study.get_trials(deepcopy=False):
            if counted(t):
                counts[TrialStatus(record(t)["status"])] += 1
        return counts


def _idle(result: TrialResult) -> bool:
    return result.duplicate_of is not None or result.status is TrialStatus.PRUNED


def _tune_problem(session: StudySession, on_progress, precompiler: Precompiler | None) -> StudyOutcome:
    session.precompiler = precompiler
    try:
        _search(session, on_progress)
    finally:
        session.drop_ahead()
        session.precompiler = None
        if precompiler is not None:
            precompiler.forget(session.problem)
    best = session.finish()
    counts = session.counts()
    return StudyOutcome(
        session.problem,
        session.name,
        counts[TrialStatus.OK],
        counts[TrialStatus.FAIL],
        counts[TrialStatus.PRUNED],
        best,
        session.run_id,
        session.study.user_attrs.get("search"),
        session.infeasible,
    )


def _search(session: StudySession, on_progress) -> None:
    budget = session.feasible_budget()
    spec = session.spec
    deadline = time.monotonic() + spec.budget.wall_time_s if spec.budget.wall_time_s else None
    idle = 0
    while (budget is None or session.objective.measured < budget) and idle < MAX_IDLE_PROPOSALS:
        if deadline is not None and time.monotonic() >= deadline:
            break
        result = session.step()
        idle = idle + 1 if _idle(result) else 0
        if idle and session.exhausted():
            break
        if not _idle(result) and session.stalled():
            break
        if on_progress:
            on_progress(
                Progress(session.problem, session.objective.measured, budget, _best_value(session.study), result)
            )


def _best_value(study) -> float | None:
    if len(study.directions) > 1:
        return None  # a Pareto front has no single best value
    try:
        return study.best_value
    except ValueError:
        return None


def _distinct(trials) -> list:
    seen: set[str] = set()
    out = []
    for t in trials:
        key = Config.make(t.params).key
        if key not in seen and "duplicate_of" not in record(t):
            seen.add(key)
            out.append(t)
    return out


def _top_k_trials(study, spec: JobSpec) -> list:
    from optuna.trial import TrialState

    complete = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    complete.sort(key=lambda t: t.value, reverse=spec.objective is Objective.MAX_THROUGHPUT)
    return _distinct(complete)[: spec.top_k]


def _front_trials(study) -> list:
    """The tuned Pareto front; re-measuring may reorder it, so the whole front is measured again."""
    return _distinct(sorted(study.best_trials, key=lambda t: t.values))


def _remeasure(trials, objective: TrialObjective, spec: JobSpec) -> list[BestLog]:
    """Measure configs again with more repeats; the winner is picked from these, not from tuning noise."""
    out = []
    for t in trials:
        config = Config.make(t.params)
        result = objective.measure(config, replace(objective.bench, repeats=spec.bench.remeasure_repeats))
        if result.measurement is not None:
            tuned = Measurement.from_json(record(t)["measurement"])
            out.append(BestLog(t.number, config, tuned, result.measurement))
    return out


def _rank(m: Measurement, objective: Objective) -> float:
    value = primary(m, objective)
    return -value if objective is Objective.MAX_THROUGHPUT else value
