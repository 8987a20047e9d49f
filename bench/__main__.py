import sys

if sys.argv[1:2] == ["scale"]:
    from bench.scale import main

    sys.exit(main(sys.argv[2:]))
if sys.argv[1:2] == ["instructions"]:
    from bench.instructions import main

    sys.exit(main(sys.argv[2:]))
from bench.run import main

sys.exit(main())
