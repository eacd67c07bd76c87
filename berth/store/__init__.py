"""The bottom of Berth: the database, its tables and migrations, leases and the audit log.

Everything that persists goes through here. The audit log lives with the tables because an admin
action and its record are written in one transaction.
"""
