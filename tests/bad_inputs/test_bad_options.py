"""Bad-input corpus, part 1: option values and arguments of every command, refused before any work starts.

Each case must end in one line ``error: ...`` naming the option (exit 2), with no backend built, no text embedded,
nothing fitted and no file of the workspace changed (see _corpus.py).
"""

from __future__ import annotations

from _corpus import Case, cases, check, corpus_template, ws  # noqa: F401 (fixtures)

E = "embed {pairs} --out {ws}/newrun "
F = "fit {run} --out {ws}/newmodel "
R = "route {bundle} --user-data {user} --out {ws}/routed "
V = "eval {bundle} {run} "
S = "score {bundle} --input {rows} --out {ws}/rewards.parquet "
W = "sweep {run} --out {ws}/sw.parquet --grid k=1,2 "
P = "data prepare generic {raw} -o {ws}/new.parquet "


def zero(command: str, prefix: str, *options: str) -> list[Case]:
    """``--OPTION 0`` refused with '--OPTION must be >= 1, got 0', for each count option of one command."""
    return [Case(f"{command}-{o}-0", f"{prefix}--{o} 0", rf"--{o} must be >= 1, got 0") for o in options]


EMBED = [
    *zero("embed", E, "batch-size", "max-length", "workers", "tensor-parallel-size"),
    Case("embed-batch-size-negative", E + "--batch-size -4", r"--batch-size must be >= 1, got -4"),
    Case("embed-batch-size-text", E + "--batch-size lots", r"'--batch-size'"),
    Case("embed-max-length-negative", E + "--max-length -1", r"--max-length must be >= 1"),
    Case("embed-cache-dtype-int8", E + "--cache-dtype int8", r"--cache-dtype must be one of float16, float32"),
    Case("embed-overlong-drop", E + "--overlong drop", r"--overlong must be one of truncate, skip, got 'drop'"),
    Case("embed-truncation-middle", E + "--truncation middle", r"--truncation must be one of .*'middle'"),
    Case("embed-backend-unknown", E + "--backend onnx", r"--backend must be one of .*'onnx'"),
    Case("embed-dtype-unknown", E + "--dtype int4", r"--dtype must be one of .*'int4'"),
    Case(
        "embed-max-batch-tokens-0", E + "--backend transformers --max-batch-tokens 0", r"--max-batch-tokens must be .*0"
    ),
    Case("embed-max-batch-tokens-st-0", E + "--max-batch-tokens 0", r"--max-batch-tokens must be >= 1, got 0"),
    Case("embed-device-unknown", E + "--device gpu", r"--device .*'gpu'"),
    Case(
        "embed-attn-unknown",
        E + "--backend transformers --attn-implementation magic",
        r"--attn-implementation .*'magic'",
    ),
    Case("embed-gpu-memory-1.5", E + "--backend vllm --gpu-memory-utilization 1.5", r"--gpu-memory-utilization"),
    Case("embed-max-model-len-st", E + "--max-model-len 512", r"--max-model-len applies to the"),
    Case("embed-max-num-batched-tokens-text", E + "--max-num-batched-tokens many", r"'--max-num-batched-tokens'"),
    Case("embed-address-without-ray", E + "--address auto", r"--address .* needs --ray"),
    Case("embed-workers-negative", E + "--workers=-2", r"--workers must be >= 1, got -2"),
    Case("embed-device-cuda-letter", E + "--device cuda:x", r"--device must be one of .*'cuda:x'"),
    Case("embed-attn-st", E + "--attn-implementation sdpa", r"--attn-implementation applies to the transformers"),
    Case("embed-gpu-memory-0", E + "--backend vllm --gpu-memory-utilization 0", r"--gpu-memory-utilization .* got 0"),
    Case(
        "embed-gpu-memory-transformers",
        E + "--backend transformers --gpu-memory-utilization 0.5",
        r"--gpu-memory-utilization applies to the vllm backend",
    ),
    Case("embed-max-model-len-0", E + "--backend vllm --max-model-len 0", r"--max-model-len must be .*0"),
    Case(
        "embed-max-num-batched-tokens-0",
        E + "--backend vllm --max-num-batched-tokens 0",
        r"--max-num-batched-tokens must be .*0",
    ),
    Case(
        "embed-max-num-batched-tokens-transformers",
        E + "--backend transformers --max-num-batched-tokens 4096",
        r"--max-num-batched-tokens applies to the vllm backend.*--max-batch-tokens",
    ),
    Case(
        "embed-max-batch-tokens-vllm",
        E + "--backend vllm --max-batch-tokens 4096",
        r"--max-batch-tokens applies to the sentence-transformers and transformers backends.*--max-num-batched-tokens",
    ),
    Case("embed-enforce-eager-st", E + "--enforce-eager", r"--enforce-eager applies to the vllm backend"),
    Case(
        "embed-tensor-parallel-transformers",
        E + "--backend transformers --tensor-parallel-size 2",
        r"--tensor-parallel-size applies to the vllm backend, not transformers",
    ),
    Case(
        "embed-trust-remote-code-st",
        E + "--trust-remote-code",
        r"--trust-remote-code applies to the transformers and vllm backends, not sentence-transformers",
    ),
    Case("embed-address-with-workers", E + "--workers 2 --address auto", r"--address .* needs --ray"),
    Case("embed-pairs-missing", "embed {ws}/nope.parquet --out {ws}/newrun", r"nope\.parquet: no such file"),
    Case("embed-pairs-is-folder", "embed {run} --out {ws}/newrun", r"/run: is a folder, expected a pair table"),
    Case(
        "embed-pairs-raw-jsonl",
        "embed {raw} --out {ws}/newrun",
        r"raw\.jsonl: not a readable Parquet pair table.*"
        r"micro data prepare",
    ),
    Case("embed-cache-dir-is-file", E + "--cache-dir {raw}", r"--cache-dir .*raw\.jsonl: .* is a file, not a folder"),
    Case(
        "embed-cache-dir-unknown-store",
        E + "--cache-dir nosuch://bucket/c",
        r"nosuch://bucket/c: cannot open this store",
    ),
    Case("embed-unknown-option", E + "--batchsize 4", r"No such option: --batchsize"),
    Case("embed-missing-out", "embed {pairs}", r"Missing option '--out'"),
]

FIT = [
    *zero("fit", F, "n-init", "patience", "gate-hidden"),
    Case("fit-k-0", F + "--k 0", r"--k must be a positive integer or 'auto', got '0'"),
    Case("fit-k-negative", F + "--k=-3", r"--k must be a positive integer or 'auto', got '-3'"),
    Case("fit-k-word", F + "--k ten", r"--k must be a positive integer or 'auto', got 'ten'"),
    Case("fit-k-range-reversed", F + "--k auto --k-range 5..2", r"--k-range: need 1 <= low <= high, got 5..2"),
    Case("fit-k-range-garbage", F + "--k auto --k-range many", r"--k-range expects LOW..HIGH"),
    Case("fit-alpha-nan", F + "--alpha nan", r"--alpha must be a finite number, got nan"),
    Case("fit-alpha-inf", F + "--alpha inf", r"--alpha must be a finite number, got inf"),
    Case("fit-alpha-negative", F + "--alpha=-0.5", r"--alpha must be >= 0, got -0.5"),
    Case("fit-l2-inf", F + "--l2 inf", r"--l2 must be auto or a finite number >= 0, got 'inf'"),
    Case("fit-l2-nan", F + "--l2 nan", r"--l2 must be auto or a finite number >= 0"),
    Case("fit-l2-negative", F + "--l2=-1e-4", r"--l2 must be auto or a finite number >= 0"),
    Case("fit-l2-word", F + "--l2 strong", r"--l2 must be auto or a finite number >= 0, got 'strong'"),
    Case("fit-gate-l2-nan", F + "--gate-l2 nan", r"--gate-l2 must be a finite number"),
    Case("fit-holdout-1", F + "--holdout 1", r"--holdout must be >= 0 and < 1, got 1"),
    Case("fit-holdout-negative", F + "--holdout=-0.1", r"--holdout must be >= 0 and < 1"),
    Case("fit-calibrate-unknown", F + "--calibrate maybe", r"--calibrate must be one of auto, on, off, got 'maybe'"),
    Case("fit-gate-dim-0", F + "--gate-dim 0", r"--gate-dim must be auto, none or an integer >= 1, got '0'"),
    Case("fit-tol-nan", F + "--tol nan", r"--tol must be a finite number"),
    Case("fit-tol-negative", F + "--tol=-1", r"--tol must be >= 0"),
    Case("fit-max-iter-negative", F + "--max-iter=-1", r"--max-iter must be >= 0, got -1"),
    Case("fit-seed-negative", F + "--seed=-1", r"--seed must be >= 0, got -1"),
    Case("fit-dim-0", F + "--dim 0", r"--dim must be auto, none or an integer >= 1, got '0'"),
    Case("fit-dim-word", F + "--dim wide", r"--dim must be auto, none or an integer >= 1, got 'wide'"),
    Case("fit-gate-unknown", F + "--gate mlp", r"--gate must be one of context, static, got 'mlp'"),
    Case("fit-gate-input-unknown", F + "--gate-input response", r"--gate-input must be one of auto, prompt, context"),
    Case("fit-init-unknown", F + "--init zeros", r"--init must be one of gate-kmeans, kmeans, random, split"),
    Case("fit-optimizer-unknown", F + "--optimizer sgd", r"--optimizer must be one of em, adamw, got 'sgd'"),
    Case("fit-epochs-0", F + "--optimizer adamw --epochs 0", r"--epochs must be >= 1, got 0"),
    Case("fit-baseline-unknown", F + "--baseline oracle", r"--baseline must be one of single, static"),
    Case("fit-auto-adamw", F + "--k auto --optimizer adamw", r"--k auto fits with --optimizer em"),
    Case("fit-auto-single", F + "--k auto --baseline single", r"--k auto: the single baseline has one head"),
    Case("fit-auto-holdout-0", F + "--k auto --holdout 0", r"--k auto needs --holdout > 0: K is chosen on the held"),
    Case("fit-run-missing", "fit {ws}/norun", r"norun: not a run folder \(no run\.json\)"),
    Case("fit-max-iter-text", F + "--max-iter many", r"'--max-iter'"),
    Case("fit-k-range-0", F + "--k auto --k-range 0..3", r"--k-range: need 1 <= low <= high, got 0..3"),
    Case("fit-gate-l2-negative", F + "--gate-l2=-1", r"--gate-l2 must be >= 0, got -1"),
    Case("fit-gate-dim-word", F + "--gate-dim wide", r"--gate-dim must be auto, none or an integer >= 1, got 'wide'"),
    Case("fit-dim-negative", F + "--dim=-8", r"--dim must be auto, none or an integer >= 1, got '-8'"),
    Case("fit-holdout-text", F + "--holdout most", r"'--holdout'"),
    Case("fit-patience-text", F + "--patience long", r"'--patience'"),
    Case("fit-epochs-text", F + "--optimizer adamw --epochs x", r"'--epochs'"),
    Case("fit-calibrate-on-without-holdout", F + "--calibrate on --holdout 0", r"--calibrate on needs --holdout > 0"),
]

ROUTE = [
    *zero("route", R, "epochs", "budget-per-group", "seeds"),
    Case("route-tau-0", R + "--tau 0", r"--tau must be > 0, got 0"),
    Case("route-tau-nan", R + "--tau nan", r"--tau must be a finite number"),
    Case("route-tau-negative", R + "--tau=-1", r"--tau must be > 0"),
    Case("route-lr-0", R + "--lr 0", r"--lr must be > 0, got 0"),
    Case("route-lr-inf", R + "--lr inf", r"--lr must be a finite number"),
    Case("route-hedge-tau-0", R + "--online --user g1 --hedge-tau 0", r"--hedge-tau must be > 0"),
    Case("route-hedge-tau-nan", R + "--online --user g1 --hedge-tau nan", r"--hedge-tau must be a finite number"),
    Case("route-seeds-text", R + "--seeds two", r"'--seeds'"),
    Case("route-online-without-user", R + "--online", r"--online needs --user NAME"),
    Case("route-adapt-unknown", R + "--adapt span", r"--adapt must be one of auto, mixture, residual, got 'span'"),
    Case("route-user-unknown", R + "--user nobody", r"user 'nobody' not found"),
    Case(
        "route-user-data-missing",
        "route {bundle} --user-data {ws}/none.jsonl",
        r"--user-data .*none\.jsonl: no such file",
    ),
    Case("route-user-data-folder", "route {bundle} --user-data {run}", r"--user-data .*/run: is a folder"),
    Case("route-bundle-missing", "route {ws}/nobundle --user-data {user}", r"nobundle: not a model bundle"),
]

EVAL = [
    *zero("eval", V, "epochs", "budget-per-group", "seeds"),
    Case("eval-hyre-n-negative", V + "--hyre-n=-1", r"--hyre-n must be >= 0, got -1"),
    Case("eval-budgets-text", V + "--budgets 5,ten", r"--budgets must be comma-separated integers"),
    Case("eval-budgets-0", V + "--budgets 0,5", r"--budgets must all be >= 1"),
    Case("eval-budgets-none", V + "--budgets , --report {ws}/rep", r"--budgets must list at least one budget"),
    Case("eval-budgets-none-lgo", V + "--budgets , --protocol leave-group-out", r"--budgets must list at least one"),
    Case("eval-tau-0", V + "--tau 0", r"--tau must be > 0"),
    Case("eval-lr-nan", V + "--lr nan", r"--lr must be a finite number"),
    Case("eval-protocol-unknown", V + "--protocol loo", r"--protocol must be one of seen, leave-group-out, got 'loo'"),
    Case("eval-adapt-unknown", V + "--protocol leave-group-out --adapt span", r"--adapt must be one of auto"),
    Case("eval-jobs-0", V + "--protocol leave-group-out --jobs 0", r"--jobs must be >= 1, got 0"),
    Case("eval-run-missing", "eval {bundle} {ws}/norun", r"norun: not a run folder"),
    Case("eval-bundle-missing", "eval {ws}/nob {run}", r"nob: not a model bundle"),
]

SCORE = [
    Case("score-context-and-user", S + "--context c --user {profile}", r"give either --context or --user, not both"),
    Case("score-context-empty", S + "--context ' '", r"--context is empty"),
    Case(
        "score-device-unknown", S + "--device gpu", r"--device must be one of auto \| cpu \| cuda \| cuda:N, got 'gpu'"
    ),
    Case("score-input-missing", "score {bundle} --input {ws}/none.jsonl", r"--input .*none\.jsonl: no such file"),
    Case("score-out-csv", "score {bundle} --input {rows} --out {ws}/r.csv", r"--out .*r\.csv: .*\.parquet or \.jsonl"),
    Case("score-user-missing", S + "--user {ws}/nobody.json", r"--user .*nobody\.json: no such file"),
    Case("score-user-folder", S + "--user {ws}/profiles", r"--user .*profiles: "),
    Case("score-user-bundle-not-routed", S + "--user {bundle}", r"bundle: a bundle folder but not a routed bundle"),
    Case("score-cache-dir-file", S + "--cache-dir {raw}", r"--cache-dir .*raw\.jsonl: .*is a file, not a folder"),
    Case(
        "route-cache-dir-file",
        "route {bundle} --user-data {user} --cache-dir {raw}",
        r"--cache-dir .*raw\.jsonl: .*is a file, not a folder",
    ),
    Case("score-bundle-missing", "score {ws}/nob --input {rows}", r"nob: not a model bundle"),
]

SWEEP = [
    *zero("sweep", W, "seeds", "jobs", "samples", "top"),
    Case("sweep-stage-unknown", W + "--stage eval", r"--stage must be one of fit, route, all, got 'eval'"),
    Case("sweep-backend-unknown", W + "--backend dask", r"--backend must be one of local, ray, got 'dask'"),
    Case("sweep-holdout-1", W + "--holdout 1", r"--holdout must be >= 0 and < 1, got 1"),
    Case("sweep-holdout-negative", W + "--holdout=-0.1", r"--holdout must be >= 0 and < 1"),
    Case("sweep-grid-unknown-name", "sweep {run} --grid 'heads=1,2'", r"sweep: unknown hyperparameter 'heads'"),
    Case("sweep-grid-bad-value", "sweep {run} --grid 'k=1,two'", r"sweep: k='two' is not a valid int"),
    Case("sweep-grid-range-without-samples", "sweep {run} --grid 'alpha=0..1'", r"alpha is a range; use --samples"),
    Case("sweep-grid-routing-in-fit", "sweep {run} --grid 'tau=0.1,1'", r"routing hyperparameters: use --stage route"),
    Case("sweep-grid-no-values", "sweep {run} --grid 'k='", r"sweep: expected NAME=VALUES, got 'k='"),
    Case("sweep-grid-twice", "sweep {run} --grid 'k=1; k=2'", r"sweep: k given twice"),
    Case("sweep-grid-bad-log-range", "sweep {run} --samples 3 --grid 'alpha=log:0..1'", r"bad range alpha"),
    Case("sweep-grid-k-0", "sweep {run} --grid 'k=0,2'", r"sweep: k=0: .*'n_components' parameter .*range \[1, inf\)"),
    Case("sweep-grid-l2-negative", "sweep {run} --grid 'l2=auto,-1'", r"sweep: l2=-1\.0: .*'l2' parameter"),
    Case("sweep-grid-l2-nan", "sweep {run} --grid 'l2=nan'", r"sweep: l2=nan: .*'l2' parameter"),
    Case(
        "sweep-grid-l2-word", "sweep {run} --grid 'l2=auto,strong'", r"sweep: l2='strong' is not a valid number or auto"
    ),
    Case("sweep-grid-dim-0", "sweep {run} --grid 'dim=auto,0'", r"sweep: dim=0: .*'dim' parameter"),
    Case(
        "sweep-grid-dim-word",
        "sweep {run} --grid 'dim=wide'",
        r"sweep: dim='wide' is not a valid integer, auto or none",
    ),
    Case("sweep-grid-gate-dim-0", "sweep {run} --grid 'gate_dim=0'", r"sweep: gate_dim=0: .*'gate_dim' parameter"),
    Case("sweep-grid-gate-hidden-0", "sweep {run} --grid 'gate_hidden=0'", r"sweep: gate_hidden=0: "),
    Case("sweep-grid-n-init-0", "sweep {run} --grid 'n_init=0'", r"sweep: n_init=0: "),
    Case("sweep-grid-tol-negative", "sweep {run} --grid 'tol=-1'", r"sweep: tol=-1\.0: "),
    Case("sweep-grid-init-unknown", "sweep {run} --grid 'init=zeros'", r"sweep: init='zeros': .*'init' parameter"),
    Case("sweep-grid-gate-unknown", "sweep {run} --grid 'gate=mlp'", r"sweep: gate='mlp': .*'gate' parameter"),
    Case(
        "sweep-grid-gate-input-unknown",
        "sweep {run} --grid 'gate_input=response'",
        r"sweep: gate_input must be one of auto, prompt, context, got 'response'",
    ),
    Case(
        "sweep-grid-alpha-range-negative", "sweep {run} --samples 4 --grid 'alpha=-1..-0.5'", r"sweep: alpha=-0\.\d+: "
    ),
    Case("sweep-grid-tau-0", "sweep {run} --stage route --grid 'tau=0,1'", r"sweep: tau must be > 0, got 0"),
    Case("sweep-grid-lr-inf", "sweep {run} --stage route --grid 'lr=inf'", r"sweep: lr must be a finite number"),
    Case("sweep-grid-epochs-0", "sweep {run} --stage route --grid 'epochs=0'", r"sweep: epochs must be >= 1, got 0"),
    Case("sweep-grid-budget-0", "sweep {run} --stage route --grid 'budget=0'", r"sweep: budget must be >= 1, got 0"),
    Case("sweep-grid-not-sweepable", "sweep {run} --grid 'calibrate=on'", r"sweep: unknown hyperparameter 'calibrate'"),
    Case("sweep-rank-by-unknown", W + "--rank-by accuracy", r"--rank-by 'accuracy': no such column"),
    Case(
        "sweep-rank-by-routed-in-fit", W + "--rank-by routed_acc_macro", r"--rank-by 'routed_acc_macro': no such column"
    ),
    Case("sweep-samples-text", W + "--samples many", r"'--samples'"),
    Case("sweep-retry-errors-value", W + "--retry-errors=yes", r"--retry-errors"),
    Case(
        "sweep-every-trial-failed",
        "sweep {run} --out {ws}/sw.parquet --seeds 1 --jobs 1 --grid k=100000",
        r"every trial failed \(.*larger than the number of pairs.*\); see the 'error' column of .*sw\.parquet",
    ),
    Case("sweep-address-without-ray", W + "--address auto", r"--address .* needs --backend ray"),
    Case("sweep-out-not-parquet", "sweep {run} --grid k=1 --out {ws}/r.csv", r"--out .*r\.csv: .*\.parquet"),
    Case("sweep-run-missing", "sweep {ws}/norun --grid k=1", r"norun: not a run folder"),
]

PREPARE = [
    Case("prepare-test-size-2", P + "--test-size 2", r"--test-size must be >= 0 and <= 1, got 2"),
    Case("prepare-test-size-nan", P + "--test-size nan", r"--test-size must be a finite number"),
    Case("prepare-seed-negative", P + "--seed=-1", r"--seed must be >= 0, got -1"),
    Case("prepare-recipe-unknown", "data prepare shp {raw} -o {ws}/n.parquet", r"unknown recipe 'shp'"),
    Case("prepare-out-jsonl", "data prepare generic {raw} -o {ws}/n.jsonl", r"--out .*n\.jsonl: .*\.parquet"),
    Case("prepare-opt-no-equals", P + "--opt min_gap", r"--opt expects KEY=VALUE, got 'min_gap'"),
    Case(
        "prepare-opt-unknown",
        "data prepare dsp {raw} -o {ws}/n.parquet --opt min_gap=2",
        r"recipe 'dsp' does not take option\(s\) min_gap",
    ),
    Case(
        "prepare-labels-identical",
        P + "--a-col chosen --b-col rejected --label-col group --label-a 1 --label-b 1",
        r"--label-a and --label-b are both '1'",
    ),
    Case(
        "prepare-labels-same-number",
        P + "--a-col chosen --b-col rejected --label-col group --label-a 1 --label-tie 1.0",
        r"--label-a and --label-tie are both '1'",
    ),
    Case(
        "prepare-unknown-column", P + "--group-col annotator", r"raw\.jsonl: unknown column 'annotator' for --group-col"
    ),
    Case("prepare-partial-two-responses", P + "--a-col chosen", r"needs all of --a-col, --b-col and --label-col"),
    Case(
        "prepare-label-a-without-label-col",
        P + "--label-a 1",
        r"--label-a/--label-b/--label-tie apply to the two-responses shape",
    ),
    Case(
        "prepare-a-col-is-b-col",
        P + "--a-col chosen --b-col chosen --label-col group",
        r"--a-col and --b-col are both 'chosen'",
    ),
    Case("prepare-unknown-prompt-col", P + "--prompt-col question", r"unknown column 'question' for --prompt-col"),
    Case("prepare-unknown-chosen-col", P + "--chosen-col best", r"unknown column 'best' for --chosen-col"),
    Case("prepare-unknown-rejected-col", P + "--rejected-col worst", r"unknown column 'worst' for --rejected-col"),
    Case("prepare-unknown-context-col", P + "--context-col persona", r"unknown column 'persona' for --context-col"),
    Case("prepare-unknown-split-col", P + "--split-col fold", r"unknown column 'fold' for --split-col"),
    Case(
        "prepare-unknown-label-col",
        P + "--a-col chosen --b-col rejected --label-col winner",
        r"unknown column 'winner' for --label-col",
    ),
    Case(
        "prepare-column-option-other-recipe",
        "data prepare dsp {raw} -o {ws}/n.parquet --prompt-col prompt",
        r"recipe 'dsp' does not take option\(s\) prompt_col",
    ),
    Case("prepare-opt-empty-key", P + "--opt =2", r"--opt expects KEY=VALUE, got '=2'"),
    Case("prepare-opt-unknown-generic", P + "--opt min_gap=2", r"recipe 'generic' does not take option\(s\) min_gap"),
    Case(
        "prepare-input-missing", "data prepare generic {ws}/none.jsonl -o {ws}/n.parquet", r"none\.jsonl: no such file"
    ),
    Case(
        "prepare-input-folder", "data prepare generic {run} -o {ws}/n.parquet", r"/run: no such file \(it is a folder\)"
    ),
    Case("prepare-overwrite-refused-bad-out", "data prepare generic {raw} -o {pairs}.txt", r"\.txt: .*\.parquet"),
]

DEMO = [
    *zero("demo", "demo --out {ws}/demo ", "k", "seeds"),
    Case("demo-out-is-file", "demo --out {raw}", r"--out .*raw\.jsonl: is a file, not a folder"),
]


def bad_users_folder(ws) -> None:
    (ws.root / "users").mkdir()
    (ws.root / "users" / "alice.json").write_text("{not json")


V = "serve {bundle} --port 0 "
SERVE = [
    *zero("serve", V, "max-batch", "max-rows", "max-body-bytes"),
    Case("serve-scores-unknown", V + "--scores logit", r"--scores must be raw or sigmoid, got 'logit'"),
    Case("serve-port-out-of-range", "serve {bundle} --port 70000", r"--port must be in 0\.\.65535, got 70000"),
    Case("serve-max-wait-negative", V + "--max-wait-ms -1", r"--max-wait-ms must be >= 0"),
    Case("serve-context-empty", V + "--context ' '", r"--context is empty"),
    Case(
        "serve-device-unknown", V + "--device tpu", r"--device must be one of auto \| cpu \| cuda \| cuda:N, got 'tpu'"
    ),
    Case("serve-api-key-empty", V + "--api-key ''", r"--api-key is empty"),
    Case(
        "serve-host-public-no-key", V + "--host 0.0.0.0", r"--host 0\.0\.0\.0 is not a loopback address: give --api-key"
    ),
    Case("serve-host-unknown", V + "--host 192.0.2.1 --api-key k", r"--host 192\.0\.2\.1 --port 0: cannot listen"),
    Case("serve-users-missing", V + "--users {ws}/nobody", r"--users .*nobody: not a folder"),
    Case("serve-users-file", V + "--users {raw}", r"--users .*raw\.jsonl: not a folder"),
    Case("serve-users-bad-profile", V + "--users {ws}/users", r"alice\.json: ", setup=bad_users_folder),
    Case("serve-bundle-missing", "serve {ws}/nob --port 0", r"nob: not a model bundle"),
]

ALL = EMBED + FIT + ROUTE + EVAL + SCORE + SWEEP + PREPARE + DEMO + SERVE


@cases(*ALL)
def test_bad_option(case, ws, monkeypatch, capsys):
    check(case, ws, monkeypatch, capsys)
