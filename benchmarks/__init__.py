"""Speed and memory benchmarks, each printed as ratios against a reference measured in the same run."""
