from knotwork.cli import main

raise SystemExit(main())
