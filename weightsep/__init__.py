"""weightsep: pack many small DNNs into one memory budget with weight pages (NWV / Weight Separation).

Pipeline, one module per stage: pages (formation) -> fisher -> separation -> matching -> optimize
-> evaluate; store keeps the state on disk; dnn discovers DNN folders; cli is the command line.
"""
__version__ = "0.1.0"
