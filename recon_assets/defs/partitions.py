"""The partitions of the code location, kept in sync with the profiles table by
`partitions_sensor`: one cycle is one run over one exchange account; one correction run is one
run over one profile."""

import dagster as dg

exchange_account_partitions = dg.DynamicPartitionsDefinition(name="exchange_account")
profile_partitions = dg.DynamicPartitionsDefinition(name="profile")
