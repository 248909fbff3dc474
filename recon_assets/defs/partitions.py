"""Every snapshot and the diff are partitioned by exchange account: one cycle is one run over one
account. The partition keys are kept in sync with the accounts named in the profiles table."""

import dagster as dg

exchange_account_partitions = dg.DynamicPartitionsDefinition(name="exchange_account")
