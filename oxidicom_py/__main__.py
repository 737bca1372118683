from oxidicom_py.cli import main

raise SystemExit(main())
