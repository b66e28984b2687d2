"""ulffn_deploy.calib"""
