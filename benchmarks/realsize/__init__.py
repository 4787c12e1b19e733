"""Assets for advkit's real-size acceptance runs: hand-written ResNets, a JPEG folder maker, a train-and-export script."""
