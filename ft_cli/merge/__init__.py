"""What training produced, put to use: adapters loaded onto their base, the verified merge, generate and chat."""
