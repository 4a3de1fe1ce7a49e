"""`wn-export bench`: step-loop and scoring throughput of our hosts against baselines measured in the same
run (the r9y9-style eager incremental baseline lives in `baseline_r9y9`)."""
