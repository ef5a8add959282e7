"""``python -m dnirnn ...`` is the ``dnirnn`` command."""

from dnirnn.main import main

if __name__ == "__main__":
    main()
