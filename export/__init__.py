"""ulffn_deploy.export"""
