"""One source of truth for the defaults of the estimators, the pipeline and the CLI (README "Defaults" explains
each; where ours differ from the paper's, the paper's value stands beside it)."""

#: reward heads K (MixtureBT, SharedBase, `micro fit --k`, `micro demo --k`)
N_COMPONENTS = 10
#: hidden units of an MLP gate when no width is given (the paper's)
GATE_HIDDEN = 128
#: per-row gate-entropy weight alpha (paper: 0.5; collapses the K=10 DSP heads into one here)
ALPHA, ALPHA_PAPER = 0.0, 0.5
#: router soft-label temperature tau (paper: 1e-3: one-hot labels on each pair's best head; 1.0 = posterior)
TAU, TAU_PAPER = 1.0, 1e-3
#: router epochs, minibatch size and Adam learning rate (paper: batch 32)
ROUTER_EPOCHS, ROUTER_BATCH, ROUTER_LR = 10, 32, 3e-2
#: labelled pairs per group the router (and the eval's micro row) adapts on
BUDGET = 50
#: budgets of the accuracy-vs-budget figure
BUDGETS = (5, 10, 25, 50, 100, 150)
#: labelled test pairs per group (MiCRo-)HyRe reweights on
HYRE_N = 16
#: Hedge temperature of online profiles (1 = Bayesian posterior over heads)
HEDGE_TAU = 1.0
#: seeds of routers / HyRe draws (mean +- std)
SEEDS = 5
#: Stage-1 restarts and EM iterations
N_INIT, MAX_ITER, TOL = 4, 200, 1e-6
#: the paper's minibatch recipe (``solver="adamw"``): epochs, batch size, AdamW learning rate
ADAMW_EPOCHS, ADAMW_BATCH, ADAMW_LR = 1, 32, 2e-3
#: fraction of the train prompts held out for selection and calibration; EM patience on the held-out likelihood
HOLDOUT, PATIENCE = 0.2, 10
#: L2 of the baselines that do not select one (SharedBase, OracleBT); micro eval passes the bundle's chosen L2
FIXED_L2 = 1e-4
#: seeds per configuration of `micro sweep` and per K of `micro fit --k auto`; router / HyRe seeds of `micro demo`
SWEEP_SEEDS, DEMO_SEEDS = 3, 3
#: budgets and seeds of the leave-group-out protocol (new users: `micro eval --protocol leave-group-out`)
LGO_BUDGETS, LGO_SEEDS = (50, 200), 3
