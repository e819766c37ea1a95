pytest_plugins = [
    "tests.fakes.fixtures",
    "tests.fixtures.s3",
    "tests.fixtures.simulator",
    "tests.fixtures.store_proxy",
    "tests.fixtures.transfer",
]
