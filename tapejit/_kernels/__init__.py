"""The Numba interpreters: kernel sources, the code generator that assembles them with the
op table, and the runtime that loads and runs them."""
