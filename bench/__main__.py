"""python -m bench NAME [--trials N]: run a benchmark, print ratio lines, write bench/results/NAME.json."""
import argparse
import logging
import os
import sys

BENCHES = ("raft", "replication", "replication-profile", "native-passthrough", "failover", "keepalived",
           "farm", "checkers", "idle-profile", "idle-floor", "pgbench", "vm", "write-path")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("name", choices=BENCHES)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--workload", choices=("kv", "pg"), default="kv",
                   help="failover: the demo kv app (against keepalived) or PostgreSQL "
                        "(against its own crash recovery on a plain directory)")
    p.add_argument("--commits", type=int, default=500)
    p.add_argument("--tree-mb", type=int, default=2048, help="replication: resync tree size")
    p.add_argument("--only", choices=("all", "sync_4k", "small_files", "seq", "failover_resync"),
                   default="all",
                   help="replication: one part; sync_4k = only the 4 KiB write+fsync latency "
                        "(no results file); small_files, seq, failover_resync = only those "
                        "figures (replaced in the results file, the others kept)")
    p.add_argument("--seconds", type=float, default=10.0, help="idle-profile, idle-floor: window per measurement")
    p.add_argument("--no-checkers", action="store_true", help="idle-profile: the module without checkers")
    p.add_argument("--strace", action="store_true", help="idle-profile: also count syscalls")
    pg = p.add_argument_group("pgbench (through the mirror vs a plain directory)")
    pg.add_argument("--duration", type=int, default=20, help="seconds of each pgbench run")
    pg.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    pg.add_argument("--clients", type=int, default=4, help="pgbench -c")
    pg.add_argument("--rounds", type=int, default=2,
                    help="rounds of (load, pgbench) on each side, alternating")
    pg.add_argument("--recovery-trials", type=int, default=3, help="crash recoveries on each side")
    pg.add_argument("--burst", type=int, default=500,
                    help="transactions per client between the checkpoint and the crash")
    vm = p.add_argument_group("vm (a QEMU guest's disk through the mirror vs a plain directory)")
    vm.add_argument("--vm-records", type=int, default=200, help="flushed records per round")
    vm.add_argument("--vm-mib", type=int, default=32, help="MiB written per round (at most 48)")
    vm.add_argument("--vm-failovers", type=int, default=2, help="host kills (each side once for 2)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (the lab uses network namespaces)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING)
    if args.name == "raft":
        from .raft_bench import run
        run(trials=args.trials, commits=args.commits)
    elif args.name == "replication":
        from .replication_bench import (
            run,
            run_failover_only,
            run_seq_only,
            run_small_files_only,
            run_sync_4k_only,
        )
        if args.only == "sync_4k":
            run_sync_4k_only()
        elif args.only == "small_files":
            run_small_files_only()
        elif args.only == "seq":
            run_seq_only()
        elif args.only == "failover_resync":
            run_failover_only()
        else:
            run(tree_mb=args.tree_mb)
    elif args.name == "replication-profile":
        from .replication_profile import run
        run()
    elif args.name == "native-passthrough":
        from .native_passthrough import run
        run()
    elif args.name == "failover" and args.workload == "pg":
        from .failover_pg_bench import run
        run(trials=args.trials)
    elif args.name == "failover":
        from .failover_bench import run
        run(trials=max(args.trials, 20))
    elif args.name == "farm":
        from .farm_bench import run
        run(trials=max(args.trials, 10))
    elif args.name == "checkers":
        from .checkers_bench import run
        run(trials=max(args.trials, 10))
    elif args.name == "idle-profile":
        from .idle_profile import run
        run(seconds=args.seconds, checkers=not args.no_checkers, strace=args.strace)
    elif args.name == "idle-floor":
        from .idle_floor import run
        run(seconds=max(args.seconds, 15.0))
    elif args.name == "pgbench":
        from .pgbench_bench import run
        try:
            run(scale=args.scale, clients=args.clients, duration=args.duration, rounds=args.rounds,
                recovery_trials=args.recovery_trials, burst=args.burst)
        except ValueError as e:     # a bad flag, refused before any lab starts
            p.error(str(e))
    elif args.name == "vm":
        from .vm_bench import run
        try:
            run(rounds=args.rounds, records=args.vm_records, mib=args.vm_mib, trials=args.vm_failovers)
        except ValueError as e:     # a bad flag, refused before any lab starts
            p.error(str(e))
    elif args.name == "write-path":
        from .write_path import run
        run(rounds=max(args.rounds, 3))
    elif args.name == "keepalived":
        from .keepalived_baseline import measure_keepalived_failover
        print(measure_keepalived_failover(args.trials))
    return 0


sys.exit(main())
