"""The improv-store server: object table, LMDB durability, event log, gRPC servicer."""
