import sys

from bench.preflight import check

if not {"-h", "--help"} & set(sys.argv[1:]) and check():
    sys.exit(2)

from bench.run import main  # noqa: E402  (only once the set-up is known to be there)

sys.exit(main())
