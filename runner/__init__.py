"""The runner: PID 1 inside a sandbox, holding a persistent shell.

Standard library only: it is imported on the host before the process enters the
sandbox's root, and must import nothing afterwards.
"""
