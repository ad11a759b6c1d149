"""The learned FSM batching policy (method.md §2): state encodings, the RL environment,
training with stable-baselines3, the FSM table and its distillation, policy files, and the
exact search (`optimal`) that policies are measured against.

Training (`train`, `env`) imports gymnasium and stable-baselines3; scheduling with a
trained table (`fsm`, `file`) needs neither.
"""
