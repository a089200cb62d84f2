from qbench.cli import main

raise SystemExit(main())
