from kv_cache_rl.cli import main

raise SystemExit(main())
