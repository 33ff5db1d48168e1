from kv_cache_rl.apps.cli import main

raise SystemExit(main())
