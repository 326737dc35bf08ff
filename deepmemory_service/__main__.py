from deepmemory_service.cli import main

raise SystemExit(main())
