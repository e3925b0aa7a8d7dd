from medfedpure.cli import main

raise SystemExit(main())
