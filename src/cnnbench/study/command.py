"""``cnnbench study list | show | run | status | export-k8s | report``. Only Click here; the rest loads when a command runs."""

from __future__ import annotations

import sys

import click

from cnnbench.cli_options import file_destination, launcher_options, shared

BUDGET = click.option("--budget", default=None, metavar="B", help="apply the study's [budgets.B] overrides (e.g. quick, faithful)")
SETS = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                    help="override a train option or model.<key>/data.<key> for every cell (repeatable)")
TRACKING = shared("tracking_uri")
MAX_JOBS = click.option("--max-jobs", type=click.IntRange(min=1), default=None, metavar="N",
                        help="refuse a study of more than N cell x seed runs (default 10,000), counted before any cell is built")


def _load(ref: str, budget: str | None, sets: tuple[str, ...], max_jobs: int | None = None):
    from cnnbench.study import catalog, definition

    name, text = catalog.source(ref)
    limit = definition.MAX_JOBS if max_jobs is None else max_jobs
    return name, definition.load(name, text, budget=budget, sets=sets, max_jobs=limit)


@click.group(name="study")
def command() -> None:
    """Declarative studies: a grid of cells x seeds, each run exactly once across workers, one report."""


# The source reports of the built-in recipes (../shared/docs/STUDIES.md); a recipe's description
# starts with its study id, e.g. "R2-A (...)".
REPORTS = {
    "R0": "CS7CS4 week 8 assignment (Keras strided CIFAR-10 CNN)",
    "R1": "Homework 4 Spring 2022 (Fashion-MNIST: numpy MLP, MLP, LeNet-5)",
    "R2": "CSCI 5922 Lab 2 (CIFAR-10 conv blocks x regularisers, retrieval)",
    "R3": "CMPE 597 Assignment 2 (three-conv CIFAR-10 CNN)",
    "R4": "CS182 Homework 4 (inductive bias on synthetic edges; GPU memory of ResNets)",
}


def report_of(description: str) -> str | None:
    head = description.split("-", 1)[0].strip()
    return head if head in REPORTS else None


@command.command(name="list")
def list_() -> None:
    """Built-in studies and those of installed plugins (entry-point group cnnbench.studies), grouped by
    the source report they reproduce."""
    from cnnbench.errors import ConfigError
    from cnnbench.study import catalog, definition

    groups: dict[str | None, list[str]] = {key: [] for key in [*REPORTS, None]}
    for entry in catalog.entries():
        if entry.text is None:
            groups[None].append(f"  {entry.name:<24} BROKEN  [{entry.distribution}] {entry.error}")
            continue
        try:
            study = definition.load(entry.name, entry.text)
            budgets = definition.read_text(entry.name, entry.text)[0].get("budgets", {})
            size = (f"{len(study.cells):>3} cells" if study.search is None else f"search of {study.search.trials} trials")
            groups[report_of(study.description)].append(
                f"  {entry.name:<24} {size} x {len(study.seeds)} seeds  {study.description}"
                f"  (budgets: {', '.join(budgets) or 'none'})  [{entry.distribution}]")
        except ConfigError as err:
            groups[None].append(f"  {entry.name:<24} BROKEN  [{entry.distribution}] {err}")
    for key, lines in groups.items():
        if lines:
            click.echo(f"{key} — {REPORTS[key]}:" if key else "other studies:")
            for line in lines:
                click.echo(line)


@command.command()
@click.argument("study_ref", metavar="NAME|FILE")
@BUDGET
@SETS
@click.option("--estimate/--no-estimate", default=True, show_default=True,
              help="time a few training steps per distinct model/input for a duration")
@MAX_JOBS
@shared("workers", default=2)  # the estimate assumes this many
def show(study_ref: str, budget: str | None, sets: tuple[str, ...], estimate: bool, max_jobs: int | None, workers: int = 2) -> None:
    """The cells with their resolved options, runs = cells x seeds, published figures, a time estimate."""
    from cnnbench.study import run as runs
    from cnnbench.study.estimate import estimate_seconds, wall_seconds

    _, study = _load(study_ref, budget, sets, max_jobs)
    runs.resolve_cells(study)
    if study.search is not None:
        _show_search(study, estimate, workers)
        return
    click.echo(f"study {study.study_id}: {study.description}")
    click.echo(f"metric {study.metric} ({'higher' if study.goal == 'max' else 'lower'} is better); "
               f"seeds {list(study.seeds)}; reference {study.reference or '(none)'}")
    base = study.cells[0].config.flat_params()
    common = {k: v for k, v in base.items() if all(c.config.flat_params().get(k) == v for c in study.cells)}
    click.echo("fixed: " + ", ".join(f"{k}={v}" for k, v in common.items() if k not in ("device",)))
    seconds = estimate_seconds(study, workers) if estimate else {}
    for c in study.cells:
        params = c.config.flat_params()
        varied = ", ".join(f"{k}={v}" for k, v in params.items() if k not in common)
        pub = f"  published {study.published[c.label]}" if c.label in study.published else ""
        est = f"  ~{seconds[c.label]:.0f} s/run" if c.label in seconds else ""
        click.echo(f"  {c.index:>3}  {c.label:<40} {varied}{pub}{est}")
    total = len(study.cells) * len(study.seeds)
    line = f"runs: {len(study.cells)} cells x {len(study.seeds)} seeds = {total}"
    if seconds:
        wall = wall_seconds(study, seconds, workers)
        line += (f"; estimate {_minutes(wall)} with --workers {workers} on this machine "
                 f"({_minutes(sum(seconds.values()) * len(study.seeds))} of runs; timed steps per model/input)")
    click.echo(line)
    if study.published:
        click.echo(f"published ({study.published_source or 'the study file'}, {study.published_metric}): "
                   + ", ".join(f"{k} = {v}" for k, v in study.published.items()))


def _show_search(study, estimate: bool, workers: int) -> None:
    """A [search] study: the fixed options, what is searched and how, runs = trials x seeds, an estimate
    (the base configuration's timed steps: a searched epochs or model moves it)."""
    from cnnbench.study.estimate import estimate_seconds
    from cnnbench.study.session import RunRequest, check_search

    search = study.search
    space = check_search(RunRequest(study=study, source=study.source_name))
    click.echo(f"study {study.study_id}: {study.description}")
    click.echo(f"metric {study.metric} ({'higher' if study.goal == 'max' else 'lower'} is better); seeds {list(study.seeds)}")
    fixed = {k: v for k, v in study.cells[0].config.flat_params().items() if k not in space.names and k != "device"}
    click.echo("fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    click.echo(f"search: {search.trials} trials, {search.sampler} sampler, {search.pruner} pruner, the sampler sees "
               f"{search.objective} ({search.direction}, best epoch, mean over seeds); each trial configuration is a cell")
    for text in space.texts().values():
        click.echo(f"  {text}")
    for note in space.notes:
        click.echo(f"note: {note}")
    total = search.trials * len(study.seeds)
    line = f"runs: {search.trials} trials x {len(study.seeds)} seeds = {total} (at most; pruned trials train one seed)"
    seconds = estimate_seconds(study, workers) if estimate else {}
    if seconds:
        per_run = next(iter(seconds.values()))
        line += (f"; estimate {_minutes(per_run * total / workers)} with --workers {workers} on this machine "
                 f"(~{per_run:.0f} s/run for the base configuration)")
    click.echo(line)


@command.command(name="run")
@click.argument("study_ref", metavar="NAME|FILE")
@BUDGET
@SETS
@shared("workers")
@shared("storage")
@shared("study_name", default_text="NAME or NAME-BUDGET")
@shared("experiment", default_text="the study's [base] experiment, else its name")
@TRACKING
@file_destination
@shared("max_retries")
@shared("heartbeat_interval")
@shared("device", default=None, default_text="the study's")
@click.option("--format", "fmt", default="table", type=click.Choice(("table", "md", "csv", "json")), show_default=True,
              help="how the final report is printed")
@click.option("--until-decided", is_flag=True, default=False,
              help="after the seeds ran, add seeds (in batches, through the queue) to the cells whose comparison is "
                   "still undecided, until it differs (corrected p below alpha / looks), its CI lies within "
                   "± [report] practical_difference, or --max-seeds is reached")
@click.option("--max-seeds", type=int, default=None, metavar="N", help="with --until-decided: seeds per cell at most")
@click.option("--seed-batch", type=int, default=None, metavar="K",
              help="with --until-decided: seeds added per look (default: the study's seed count)")
@MAX_JOBS
@launcher_options
def run_(study_ref: str, budget, sets, workers, storage, study_name, experiment, tracking_uri, max_retries,
         heartbeat_interval, device, fmt, until_decided=False, max_seeds=None, seed_batch=None, max_jobs=None,
         use_file_destination=False, **launcher) -> None:
    """Run every cell x seed exactly once across workers; resume = the same command.

    With --launcher slurm or ray the workers run there (PostgreSQL storage and an MLflow server
    required) and this command follows the campaign to its end, or returns at once with --detach."""
    from cnnbench.cli_options import launcher_from
    from cnnbench.study import report as reports
    from cnnbench.study.session import RunRequest, prepare, run

    if until_decided != (max_seeds is not None):
        raise click.UsageError("--until-decided needs --max-seeds N (the most seeds a cell may get)" if until_decided
                               else "--max-seeds goes with --until-decided")
    name, study = _load(study_ref, budget, sets, max_jobs)
    request = RunRequest(study=study, source=name, storage=storage, study_name=study_name, experiment=experiment,
                         tracking_uri=tracking_uri, workers=workers, max_retries=max_retries,
                         heartbeat_interval=heartbeat_interval, device=device, command=_command_line(),
                         max_jobs=max_jobs, launcher=launcher_from(launcher, study.launcher, f"study file {name}",
                                                     accept_file=use_file_destination),
                         max_seeds=max_seeds, seed_batch=seed_batch, use_file_destination=use_file_destination)
    plan = prepare(request)
    outcome = run(plan)
    if outcome.report is not None:
        click.echo(reports.render(outcome.report, fmt), nl=False)
        click.echo(f"parent run {outcome.parent_run_id}: report/report.html, report.md, cells.csv, cells.json and *.png")
        from cnnbench.cli import _run_link

        link = _run_link(plan.tracking_uri, outcome.parent_run_id)
        if link:
            click.echo(f"open it: {link}")
    if outcome.exit_code:
        from cnnbench.campaign import EXIT_JOBS_FAILED

        if outcome.exit_code == EXIT_JOBS_FAILED:
            click.echo(f"{len(outcome.failed)} of {sum(outcome.counts.values())} runs failed after their retries "
                       f"(exit {EXIT_JOBS_FAILED}); a rerun with a higher --max-retries tries them again:", err=True)
            for line in outcome.failed:
                click.echo(f"  failed: {line}", err=True)
        click.get_current_context().exit(outcome.exit_code)


@command.command()
@click.argument("study_ref", metavar="NAME|FILE")
@BUDGET
@shared("storage")
@shared("study_name", default_text="NAME or NAME-BUDGET")
@TRACKING
@MAX_JOBS
def status(study_ref: str, budget, storage, study_name, tracking_uri, max_jobs) -> None:
    """Where every cell x seed stands (finished / running / failed / waiting), with worker and age; read
    from the queue alone, so it costs the same while the study runs on many machines."""
    import time

    from cnnbench.campaign import storage as storages
    from cnnbench.campaign.queue import JobQueue
    from cnnbench.errors import ConfigError
    from cnnbench.tracking.store import resolve_uri

    _, study = _load(study_ref, budget, (), max_jobs)
    name = study_name or study.study_id
    url = storage or storages.default_storage(resolve_uri(tracking_uri))
    storages.check_url(url)
    queue = JobQueue(storages.open_engine(url), name)
    if not queue.exists():
        raise ConfigError(f"no study {name!r} in {storages.redact(url)}; start it with: cnnbench study run {study_ref}"
                          + (f" --budget {budget}" if budget else ""))
    if study.search is not None:
        _search_status(study, name, url)
        return
    now = time.time()
    by_cell: dict[str, dict[str, list]] = {}
    for row in queue.rows():
        by_cell.setdefault(row.payload.get("label", row.key), {}).setdefault(row.state, []).append(row)
    click.echo(f"study {name!r} in {storages.redact(url)}")
    for label, states in by_cell.items():
        shown = ", ".join(f"{len(states[s])} {s}" for s in JobQueue.STATES if s in states)
        click.echo(f"  {label:<40} {shown}")
        for row in states.get("running", []):
            age = now - (row.claimed_at or now)
            lease = (row.lease_expires or now) - now
            click.echo(f"      seed {row.payload.get('seed')}: running on {row.worker} for {age:.0f} s "
                       f"(lease {'expired ' + format(-lease, '.0f') + ' s ago' if lease < 0 else 'ends in ' + format(lease, '.0f') + ' s'})")
        for row in states.get("failed", []):
            click.echo(f"      seed {row.payload.get('seed')}: failed after {row.attempts} attempt(s): "
                       f"{(row.reason or row.outcome or '').splitlines()[0][:200] if (row.reason or row.outcome) else ''}")
    counts = queue.counts()
    click.echo(f"{counts['finished']}/{sum(counts.values())} finished, {counts['running']} running, "
               f"{counts['failed']} failed, {counts['waiting']} waiting")


def _search_status(study, name: str, url: str) -> None:
    """A [search] study's trials from its Optuna study (the queue holds only the campaign): each
    configuration's state, worker and age, its failure, then the counts against the trial budget."""
    from datetime import datetime

    import optuna

    from cnnbench.campaign import storage as storages
    from cnnbench.study.session import search_counts
    from cnnbench.tune.objective import trial_label
    from cnnbench.tune.study import ATTR_SURPLUS, quiet_optuna

    quiet_optuna()
    trials = optuna.load_study(study_name=name, storage=storages.open_storage(url))
    now = datetime.now()  # Optuna's trial times are naive local times
    click.echo(f"study {name!r} in {storages.redact(url)}: search of {study.search.trials} trials x "
               f"{len(study.seeds)} seeds")
    for t in trials.get_trials(deepcopy=False):
        if t.user_attrs.get(ATTR_SURPLUS):
            continue
        line = f"  {trial_label(t.number, t.params):<50} {t.state.name}"
        if t.state.name == "RUNNING" and t.datetime_start:
            line += f" on {t.user_attrs.get('worker', '?')} for {(now - t.datetime_start).total_seconds():.0f} s"
        elif t.state.name == "FAIL":
            line += ": " + t.user_attrs.get("fail_reason", "interrupted or its worker died (not counted)").splitlines()[0][:200]
        click.echo(line)
    counts = search_counts(trials, study.search.trials)
    click.echo(f"{counts['finished']}/{study.search.trials} trials finished, {counts['running']} running, "
               f"{counts['failed']} failed, {counts['waiting']} waiting")


@command.command(name="export-k8s")
@click.argument("study_ref", metavar="NAME|FILE")
@BUDGET
@SETS
@click.option("--workers", type=int, default=4, show_default=True,
              help="pods of the Indexed Job (completions = parallelism), one `study run --workers 1` each")
@click.option("--storage", required=True, metavar="URL",
              help="the PostgreSQL queue every pod shares, without a password: postgresql+psycopg2://USER@HOST/DB "
                   "(the password goes in the Secret, key PGPASSWORD)")
@click.option("--tracking-uri", default=None, metavar="URL",
              help="the MLflow server every pod logs to, http(s)://HOST:PORT (default: $MLFLOW_TRACKING_URI)")
@click.option("--image", default="cnnbench:latest", show_default=True, metavar="IMAGE",
              help="container image with cnnbench and psycopg2-binary installed; the default is a placeholder: give "
                   "the image you pushed to a registry your cluster pulls from (REGISTRY/cnnbench:TAG)")
@click.option("--namespace", default=None, metavar="NS", help="namespace of the Job and ConfigMap (default: kubectl's)")
@click.option("--secret", default="cnnbench", show_default=True, metavar="NAME",
              help="Secret holding PGPASSWORD (and optional MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN)")
@click.option("--cpu", default="1", show_default=True, metavar="CPUS",
              help="CPU request and limit per pod (2, 500m); its whole CPUs are the worker's OMP_NUM_THREADS")
@click.option("--memory", default="4Gi", show_default=True, metavar="SIZE", help="memory request and limit per pod")
@click.option("--gpus", type=int, default=0, show_default=True, metavar="N", help="nvidia.com/gpu limit per pod")
@shared("study_name", default_text="NAME or NAME-BUDGET")
@shared("experiment", default_text="the study's [base] experiment, else its name")
@click.option("--max-retries", type=int, default=None, metavar="N",
              help="as study run --max-retries (default: study run's, 1)")
@shared("heartbeat_interval")
@click.option("--job-name", default=None, metavar="NAME",
              help="the Job's name, a DNS-1123 label (default: cnnbench-<study name>, shortened to fit)")
@MAX_JOBS
def export_k8s(study_ref: str, budget, sets, workers, storage, tracking_uri, image, namespace, secret, cpu, memory,
               gpus, study_name, experiment, max_retries, heartbeat_interval, job_name, max_jobs) -> None:
    """Print a Kubernetes Job (and, for a study FILE, a ConfigMap holding it) that runs the study on
    --workers pods: kubectl apply -f the output.

    Every pod runs `cnnbench study run ... --workers 1 --launcher local` on the shared --storage and
    MLflow server; the password comes from the Secret --secret, never from the manifest. See
    deploy/README.md for the pod failure policy."""
    from cnnbench.campaign.storage import redact
    from cnnbench.study.k8s import Export, build, password_key, render

    docs = build(Export(study_ref=study_ref, storage=storage, tracking_uri=tracking_uri, workers=workers, image=image,
                        namespace=namespace, secret=secret, cpu=cpu, memory=memory, gpus=gpus, budget=budget,
                        sets=tuple(sets), study_name=study_name, heartbeat_interval=heartbeat_interval,
                        job_name=job_name, max_jobs=max_jobs, max_retries=max_retries, experiment=experiment))
    click.echo(render(docs), nl=False)
    job = docs[-1]["metadata"]
    ns = f" -n {namespace}" if namespace else ""
    status = job["annotations"]["cnnbench/study"]
    click.echo(f"# next: kubectl{ns} create secret generic {secret} --from-literal={password_key(storage)}=... (once); "
               f"kubectl{ns} apply -f FILE; follow it: cnnbench study status {study_ref}"
               + (f" --budget {budget}" if budget else "") + f" --study-name {status} --storage {redact(storage)}",
               err=True)


@command.command()
@click.argument("ref", metavar="NAME|FILE|PARENT_RUN_ID")
@BUDGET
@shared("experiment", default_text="look in every experiment")
@TRACKING
@click.option("--format", "fmt", default="table", type=click.Choice(("table", "md", "csv", "json", "html")), show_default=True,
              help="html: one self-contained page (figures inline), as report/report.html on the parent")
@shared("study_name", default_text="NAME or NAME-BUDGET")
@click.option("--log/--no-log", default=False, show_default=True, help="also log the report to the parent run")
@MAX_JOBS
def report(ref: str, budget, experiment, tracking_uri, fmt, study_name, log, max_jobs) -> None:
    """The study's table (and pivot) from MLflow alone; works while the study is still running."""
    from mlflow.tracking import MlflowClient

    from cnnbench.study import report as reports
    from cnnbench.study.definition import check_study_name
    from cnnbench.tracking.store import check_reachable, resolve_uri

    if study_name is not None:
        check_study_name(study_name)  # before the store is opened: it goes into a filter string
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    client = MlflowClient(uri)
    study_id, settings = ref, None
    if not _looks_like_run_id(ref):
        _, study = _load(ref, budget, (), max_jobs)
        study_id, settings = study_name or study.study_id, study.report
        if budget is None and study_name is None:  # the only budget that ran, if only one did
            ran = _study_ids_that_ran(client, study.name, experiment=experiment)
            if len(ran) == 1:
                (study_id, ran_budget), = ran.items()
                if ran_budget is not None:
                    try:
                        settings = _load(ref, ran_budget, (), max_jobs)[1].report
                    except Exception:  # the file no longer has that budget: the recorded settings
                        settings = None
            elif len(ran) > 1:
                from cnnbench.errors import ConfigError

                listed = ", ".join(f"--budget {b}" if b else "no --budget" for b in sorted(ran.values(), key=str))
                raise ConfigError(f"study {study.name!r} ran with several budgets ({listed}); "
                                  f"give the one to report with --budget (or the parent run id)")
    parent = reports.find_parent(client, study_id, experiment=experiment)
    rep = reports.build(client, parent, settings=settings)
    if log:
        reports.log_to_parent(client, parent, rep)
    click.echo(reports.html_page(rep, client) if fmt == "html" else reports.render(rep, fmt), nl=False)


def _study_ids_that_ran(client, name: str, *, experiment: str | None = None) -> dict[str, str | None]:
    """study id -> budget (None: no --budget) of the study parents of study ``name`` in the store
    (or in ``experiment``): the sibling of :func:`cnnbench.study.report.find_parent` that finds which
    budgets ran when ``study report NAME`` names none."""
    from cnnbench.campaign.runs import quote
    from cnnbench.study.run import TAG_BUDGET, TAG_ID, TAG_STUDY

    if experiment:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp else []
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    try:
        query = f"tags.`{TAG_STUDY}` = {quote(name)} and tags.`cnnbench.role` = 'study'"
    except ValueError:
        return {}
    found: dict[str, str | None] = {}
    for start in range(0, len(ids), 100):
        for run in client.search_runs(ids[start:start + 100], filter_string=query, max_results=5000):
            tags = run.data.tags
            if TAG_ID in tags:
                ran = tags.get(TAG_BUDGET)
                found[tags[TAG_ID]] = None if ran in (None, "", "default") else ran
    return found


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _looks_like_run_id(ref: str) -> bool:
    return len(ref) == 32 and all(c in "0123456789abcdef" for c in ref)


def _command_line() -> str:
    import shlex

    args = sys.argv[1:]
    return "cnnbench " + " ".join(shlex.quote(a) for a in args) if args else ""
