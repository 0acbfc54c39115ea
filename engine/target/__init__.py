"""A storage target: its object store on mountpaths (storage), object and
intra-cluster routes (target), its ETLs (etl) and the pod runtimes that run them (pods)."""
