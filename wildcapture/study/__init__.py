"""Studies that run the whole pipeline several times: `variants` (what to compare, torch-free) and
`seed_runs` (every stage-1 seed x variant, then the summary over seeds)."""
